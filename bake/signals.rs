//! Cancellation: Ctrl-C and SIGTERM. The first asks everything running to stop and clean up;
//! the second exits at once, naming the bakes left to `bake cleanup`.

use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::journal::BakeId;

/// Cancellation: flips to true on Ctrl-C or SIGTERM.
pub type Cancel = watch::Receiver<bool>;

/// The bake ids running in this process (for the second Ctrl-C's message).
pub type Active = Arc<Mutex<Vec<BakeId>>>;

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
                std::process::exit(130);
            }
        }
    });
    rx
}
