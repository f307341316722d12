//! Cancellation: Ctrl-C and SIGTERM. The first asks everything running to stop and clean up;
//! the second exits at once, naming the bakes left to `bake cleanup`.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::journal::BakeId;

/// Cancellation: flips to true on Ctrl-C or SIGTERM.
pub type Cancel = watch::Receiver<bool>;

/// The bake ids running in this process (for the second Ctrl-C's message).
pub type Active = Arc<Mutex<Vec<BakeId>>>;

/// Every cancellation channel of the process, for [`request_stop`].
static SENDERS: Mutex<Vec<watch::Sender<bool>>> = Mutex::new(Vec::new());
/// What must run before the second Ctrl-C exits (releasing shared locks).
static ON_EXIT: Mutex<Vec<fn()>> = Mutex::new(Vec::new());

/// Stops the process's work as the first Ctrl-C does (what it made is cleaned up, groups go back),
/// from inside bake: a shared lock that is no longer this run's. Once a stop is under way it
/// changes nothing — it is never counted as the second Ctrl-C that exits at once.
pub fn request_stop() {
    if let Ok(s) = SENDERS.lock() {
        for tx in s.iter() {
            let _ = tx.send_if_modified(|v| !std::mem::replace(v, true));
        }
    }
}

/// Runs `f` before the second Ctrl-C exits the process.
pub fn on_exit(f: fn()) {
    if let Ok(mut v) = ON_EXIT.lock() {
        if !v.contains(&f) {
            v.push(f);
        }
    }
}

/// Resolves once `c` is cancelled (never, when nobody can cancel any more).
pub async fn cancelled(mut c: Cancel) {
    loop {
        if *c.borrow() {
            return;
        }
        if c.changed().await.is_err() {
            // The sender is gone: nobody can cancel any more.
            std::future::pending::<()>().await;
        }
    }
}

/// Watches for Ctrl-C / SIGTERM: the first asks every bake to stop and clean up, the second exits
/// at once, printing how to finish the cleanup.
pub fn watch(active: Active) -> Cancel {
    let (tx, rx) = watch::channel(false);
    if let Ok(mut s) = SENDERS.lock() {
        s.push(tx.clone());
    }
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else { return };
        let mut count = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {},
                _ = term.recv() => {},
            }
            count += 1;
            if count == 1 {
                let _ = tx.send(true);
                eprintln!("bake: interrupted; cleaning up (interrupt again to exit at once)");
            } else {
                let ids = active.lock().map(|a| a.clone()).unwrap_or_default();
                for id in ids {
                    eprintln!("bake: left behind; finish with: bake cleanup {id}");
                }
                let hooks = ON_EXIT.lock().map(|v| v.clone()).unwrap_or_default();
                for f in hooks {
                    f();
                }
                std::process::exit(130);
            }
        }
    });
    rx
}
