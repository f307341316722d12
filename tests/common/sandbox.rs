//! Starts the sandbox cloud (tests/sandbox/sandbox.py) for a test, and always stops it by PID.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Sandbox {
    child: Child,
    pub pid: u32,
    pub endpoint: String,
    pub host_port: String,
    pub region: String,
    /// Seconds it took from spawn to ready (warm-up included).
    pub startup: f64,
    _pid_dir: tempfile::TempDir,
}

fn python() -> String {
    std::env::var("BAKE_SANDBOX_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

impl Sandbox {
    /// A fresh sandbox on a free loopback port.
    pub fn start() -> Sandbox {
        let script = super::repo().join("tests/sandbox/sandbox.py");
        let pid_dir = tempfile::tempdir().unwrap();
        let pid_file = pid_dir.path().join("sandbox.pid");
        let started = Instant::now();
        let mut child = Command::new(python())
            .arg(&script)
            .arg("--pid-file")
            .arg(&pid_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start python3 for the sandbox (set BAKE_SANDBOX_PYTHON to another interpreter)");
        let pid = child.id();
        let stdout = child.stdout.take().unwrap();
        let mut endpoint = None;
        let mut region = "us-east-1".to_string();
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(v) = line.strip_prefix("AWS_ENDPOINT_URL=") {
                endpoint = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("AWS_REGION=") {
                region = v.to_string();
            } else if line.starts_with("# sandbox ready") {
                break;
            }
        }
        let Some(endpoint) = endpoint else {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the sandbox did not start. Install its requirements with\n  python3 -m pip install -r tests/sandbox/requirements.txt\nIts stderr:\n{err}"
            );
        };
        // Drain stderr so the server never blocks on a full pipe.
        if let Some(mut e) = child.stderr.take() {
            std::thread::spawn(move || {
                let mut sink = Vec::new();
                let _ = e.read_to_end(&mut sink);
            });
        }
        let written: u32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        assert_eq!(written, pid, "the PID file names the interpreter we started");
        let host_port = endpoint.trim_start_matches("http://").to_string();
        Sandbox { child, pid, endpoint, host_port, region, startup: started.elapsed().as_secs_f64(), _pid_dir: pid_dir }
    }

    /// Environment for a bake process (or any SDK) to use this sandbox.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_REGION".into(), self.region.clone()),
            ("AWS_DEFAULT_REGION".into(), self.region.clone()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    pub async fn sdk_config(&self, region: &str) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new(region.to_string()))
            .credentials_provider(aws_sdk_ec2::config::Credentials::new("testing", "testing", None, None, "sandbox"))
            .load()
            .await
    }

    /// One call to the control API: (HTTP status, JSON body).
    pub fn call(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let payload = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(&self.host_port).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            self.host_port,
            payload.len()
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        let status: u16 = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// A control call that must succeed.
    pub fn control(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = self.call(method, path, body.as_ref());
        assert_eq!(status, 200, "{method} {path}: {v}");
        v
    }

    /// Every live resource tagged bake:managed.
    pub fn live(&self) -> Vec<Value> {
        self.control("GET", "/_sandbox/resources", None)["resources"].as_array().unwrap().clone()
    }

    pub fn scripts(&self, instance: &str) -> Vec<Value> {
        let v = self.control("GET", &format!("/_sandbox/ssm/scripts?instance={instance}"), None);
        v["scripts"][instance].as_array().cloned().unwrap_or_default()
    }

    pub fn calls(&self) -> Value {
        self.control("GET", "/_sandbox/calls", None)
    }

    /// Stops the sandbox (SIGTERM, then SIGKILL after 10 s) and waits for it.
    pub fn stop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        unsafe {
            libc::kill(self.pid as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop();
    }
}

/// True when a process with this PID exists.
pub fn alive(pid: u32) -> bool {
    unsafe { libc::kill(pid as i32, 0) == 0 }
}
