//! Starts the sandbox cloud (tests/sandbox/sandbox.py) for a test, and always stops it by PID.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Sandbox {
    child: Child,
    /// Started with `--enforce-iam` (Sandbox::start_enforcing).
    pub enforcing: bool,
    /// The keys `env()` hands to bake processes: None for the root keys (see `run_as`).
    principal: std::sync::Mutex<Option<Creds>>,
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

/// Access keys of an IAM principal in an enforcing sandbox: an IAM user's (no session token) or an
/// assumed role's session.
#[derive(Clone, Debug)]
pub struct Creds {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// The principal's ARN as AWS names it in messages (user ARN, or assumed-role session ARN).
    pub arn: String,
}

impl Creds {
    pub fn provider(&self) -> aws_sdk_ec2::config::Credentials {
        aws_sdk_ec2::config::Credentials::new(self.access_key_id.clone(), self.secret_access_key.clone(), self.session_token.clone(), None, "sandbox-principal")
    }
}

impl Sandbox {
    /// A fresh sandbox on a free loopback port.
    pub fn start() -> Sandbox {
        Sandbox::spawn(false)
    }

    /// A fresh sandbox in IAM enforcing mode (`sandbox.py --enforce-iam`): the root keys (`env()`,
    /// `sdk_config`) may do anything; a principal made with `create_user` / `assume_role` is
    /// authorized as AWS does it, and every evaluation is recorded (`decisions`).
    pub fn start_enforcing() -> Sandbox {
        Sandbox::spawn(true)
    }

    fn spawn(enforcing: bool) -> Sandbox {
        let script = super::repo().join("tests/sandbox/sandbox.py");
        let pid_dir = tempfile::tempdir().unwrap();
        let pid_file = pid_dir.path().join("sandbox.pid");
        let started = Instant::now();
        let mut cmd = Command::new(python());
        cmd.arg(&script).arg("--pid-file").arg(&pid_file).env_remove("BAKE_SANDBOX_ENFORCE_IAM");
        if enforcing {
            cmd.arg("--enforce-iam");
        }
        let mut child =
            cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start python3 for the sandbox (set BAKE_SANDBOX_PYTHON to another interpreter)");
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
            panic!("the sandbox did not start. Install its requirements with\n  python3 -m pip install -r tests/sandbox/requirements.txt\nIts stderr:\n{err}");
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
        Sandbox {
            child,
            enforcing,
            principal: std::sync::Mutex::new(None),
            pid,
            endpoint,
            host_port,
            region,
            startup: started.elapsed().as_secs_f64(),
            _pid_dir: pid_dir,
        }
    }

    /// Environment for a bake process (or any SDK) to use this sandbox: the root keys, or those of
    /// the principal set with `run_as`.
    pub fn env(&self) -> Vec<(String, String)> {
        match self.principal.lock().unwrap().as_ref() {
            Some(c) => self.env_as(c),
            None => vec![
                ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
                ("AWS_REGION".into(), self.region.clone()),
                ("AWS_DEFAULT_REGION".into(), self.region.clone()),
                ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
                ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ],
        }
    }

    /// Environment for a process acting as `creds` (AWS_SESSION_TOKEN when it is a session).
    pub fn env_as(&self, creds: &Creds) -> Vec<(String, String)> {
        let mut env = vec![
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_REGION".into(), self.region.clone()),
            ("AWS_DEFAULT_REGION".into(), self.region.clone()),
            ("AWS_ACCESS_KEY_ID".into(), creds.access_key_id.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), creds.secret_access_key.clone()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ];
        if let Some(t) = &creds.session_token {
            env.push(("AWS_SESSION_TOKEN".into(), t.clone()));
        }
        env
    }

    /// From now on `env()` (and so every bake process the common helpers start) uses `creds`;
    /// None goes back to the root keys. `sdk_config` always stays root, for test set-up.
    pub fn run_as(&self, creds: Option<&Creds>) {
        *self.principal.lock().unwrap() = creds.cloned();
    }

    /// SDK configuration acting as `creds`.
    pub async fn sdk_config_as(&self, region: &str, creds: &Creds) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new(region.to_string()))
            .credentials_provider(creds.provider())
            .load()
            .await
    }

    /// An IAM user with these inline policies (name, document) and an access key, made with the
    /// root keys. Its keys are authorized by its policies in an enforcing sandbox.
    pub async fn create_user(&self, name: &str, inline: &[(&str, Value)]) -> Creds {
        let iam = aws_sdk_iam::Client::new(&self.sdk_config("us-east-1").await);
        let user = iam.create_user().user_name(name).send().await.expect("create the user").user.unwrap();
        for (policy, doc) in inline {
            iam.put_user_policy().user_name(name).policy_name(*policy).policy_document(doc.to_string()).send().await.expect("put the user's policy");
        }
        let key = iam.create_access_key().user_name(name).send().await.expect("create an access key").access_key.unwrap();
        Creds { access_key_id: key.access_key_id, secret_access_key: key.secret_access_key, session_token: None, arn: user.arn }
    }

    /// A customer managed policy (for boundaries and attachments); its ARN.
    pub async fn create_policy(&self, name: &str, doc: &Value) -> String {
        let iam = aws_sdk_iam::Client::new(&self.sdk_config("us-east-1").await);
        iam.create_policy().policy_name(name).policy_document(doc.to_string()).send().await.expect("create the policy").policy.unwrap().arn.unwrap()
    }

    /// A role any principal of the account may assume (trust policy: the account root), with these
    /// inline policies and optional permissions boundary (a policy ARN); its ARN.
    pub async fn create_role(&self, name: &str, inline: &[(&str, Value)], boundary: Option<&str>) -> String {
        let iam = aws_sdk_iam::Client::new(&self.sdk_config("us-east-1").await);
        let trust = serde_json::json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
            "Principal": {"AWS": "arn:aws:iam::123456789012:root"}, "Action": "sts:AssumeRole"}]});
        let mut req = iam.create_role().role_name(name).assume_role_policy_document(trust.to_string());
        if let Some(b) = boundary {
            req = req.permissions_boundary(b);
        }
        let role = req.send().await.expect("create the role").role.unwrap();
        for (policy, doc) in inline {
            iam.put_role_policy().role_name(name).policy_name(*policy).policy_document(doc.to_string()).send().await.expect("put the role's policy");
        }
        role.arn
    }

    /// A session of `role_arn` (AssumeRole made with the root keys, which the sandbox allows for
    /// set-up although AWS does not let a root user assume roles).
    pub async fn assume_role(&self, role_arn: &str, session: &str) -> Creds {
        self.assume_role_with(role_arn, session, None).await
    }

    /// [`Sandbox::assume_role`] with an external id (a workload account's role that asks one).
    pub async fn assume_role_with(&self, role_arn: &str, session: &str, external_id: Option<&str>) -> Creds {
        let sts = aws_sdk_sts::Client::new(&self.sdk_config("us-east-1").await);
        let out = sts
            .assume_role()
            .role_arn(role_arn)
            .role_session_name(session)
            .set_external_id(external_id.map(str::to_string))
            .send()
            .await
            .expect("assume the role");
        let c = out.credentials.unwrap();
        Creds {
            access_key_id: c.access_key_id,
            secret_access_key: c.secret_access_key,
            session_token: Some(c.session_token),
            arn: out.assumed_role_user.unwrap().arn,
        }
    }

    /// Every authorization the enforcing sandbox evaluated since the last `clear_decisions` (or
    /// only the denials): action, resource, decision, reason, and for allows the identity-policy
    /// statements that allowed it (`allowed_by`: [{policy, sid}]).
    pub fn decisions(&self, denied_only: bool) -> Vec<Value> {
        let path = if denied_only { "/_sandbox/iam/decisions?denied=1" } else { "/_sandbox/iam/decisions" };
        self.control("GET", path, None)["decisions"].as_array().cloned().unwrap_or_default()
    }

    pub fn clear_decisions(&self) {
        self.control("DELETE", "/_sandbox/iam/decisions", None);
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

    /// One call to an AWS JSON-protocol service the tests have no SDK crate for (KMS, say), with
    /// the root keys (whose signature the sandbox does not check): the JSON answer.
    pub fn aws_json(&self, service: &str, target: &str, body: &Value) -> Value {
        self.aws_json_in(&self.region.clone(), service, target, body)
    }

    /// [`Sandbox::aws_json`] in `region`.
    pub fn aws_json_in(&self, region: &str, service: &str, target: &str, body: &Value) -> Value {
        let payload = body.to_string();
        let mut s = TcpStream::connect(&self.host_port).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-amz-json-1.1\r\nX-Amz-Target: {target}\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=testing/20260101/{}/{service}/aws4_request, SignedHeaders=host, Signature=0\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{payload}",
            self.host_port,
            region,
            payload.len()
        )
        .unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
        assert!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200"), "{service} {target}: {raw}");
        serde_json::from_str(body).unwrap_or(Value::Null)
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
