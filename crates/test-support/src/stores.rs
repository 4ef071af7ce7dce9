//! Real data-store servers with real certificates, for the TLS tests.
//!
//! * [`TestCa`] — a certificate authority made by `openssl` for one test,
//!   and server certificates it signs (for `localhost` and `127.0.0.1`, or
//!   for another name, to prove a name mismatch is caught).
//! * [`PrivatePostgres`] — a PostgreSQL cluster of the test's own
//!   (`initdb` in a temporary folder, its own port), with or without TLS;
//!   stopped and deleted when dropped. As root it runs as the `postgres`
//!   user, which PostgreSQL requires.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A temporary folder, deleted when dropped.
#[derive(Debug)]
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(what: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("unilink-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&path).expect("create a temporary folder");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A certificate authority of one test.
#[derive(Debug)]
pub struct TestCa {
    dir: TempDir,
}

/// A server's certificate and key, signed by a [`TestCa`].
#[derive(Debug, Clone)]
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// A new CA (P-256, valid for a day, a name of its own).
    pub fn new() -> TestCa {
        let dir = TempDir::new("ca");
        let subject = format!("/CN=UniLink test CA {}", uuid::Uuid::new_v4().simple());
        run(Command::new("openssl")
            .current_dir(dir.path())
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
            ])
            .args(["-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", &subject])
            .args(["-addext", "basicConstraints=critical,CA:TRUE"])
            .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]));
        TestCa { dir }
    }

    /// The CA certificate (what a client trusts).
    pub fn cert(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A server certificate for `names` (`DNS:localhost`, `IP:127.0.0.1`…).
    pub fn issue(&self, file: &str, names: &[&str]) -> ServerCert {
        let dir = self.dir.path();
        let extensions = dir.join(format!("{file}.ext"));
        std::fs::write(
            &extensions,
            format!(
                "subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
                names.join(",")
            ),
        )
        .expect("write the extensions");
        run(Command::new("openssl")
            .current_dir(dir)
            .args(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"])
            .args(["-keyout", &format!("{file}.key"), "-out", &format!("{file}.csr")])
            .args(["-subj", "/CN=unilink test server"]));
        run(Command::new("openssl")
            .current_dir(dir)
            .args([
                "x509",
                "-req",
                "-in",
                &format!("{file}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
            ])
            .args(["-CAcreateserial", "-days", "1", "-out", &format!("{file}.pem")])
            .arg("-extfile")
            .arg(&extensions));
        ServerCert {
            cert: dir.join(format!("{file}.pem")),
            key: dir.join(format!("{file}.key")),
        }
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

fn postgres_bin(name: &str) -> PathBuf {
    let versioned = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|entries| {
            let mut versions: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            versions.sort();
            versions.pop()
        })
        .map(|v| v.join("bin").join(name));
    match versioned {
        Some(path) if path.exists() => path,
        _ => PathBuf::from(name),
    }
}

/// Whether this process runs as root (PostgreSQL refuses to).
fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `command` as the `postgres` user when we are root.
fn as_postgres(program: &Path) -> Command {
    if is_root() {
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=postgres", "--regid=postgres", "--init-groups", "--"])
            .arg(program);
        command
    } else {
        Command::new(program)
    }
}

/// A PostgreSQL server of one test on a free loopback port (trust auth,
/// user `postgres`).
#[derive(Debug)]
pub struct PrivatePostgres {
    /// Its data and socket folder, deleted with it.
    _dir: TempDir,
    port: u16,
    child: Child,
}

impl PrivatePostgres {
    /// Starts a cluster; with `tls`, `ssl=on` with that certificate.
    pub async fn start(tls: Option<&ServerCert>) -> PrivatePostgres {
        let dir = TempDir::new("pg");
        let data = dir.path().join("data");
        if is_root() {
            run(Command::new("chown").arg("postgres:postgres").arg(dir.path()));
        }
        run(as_postgres(&postgres_bin("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])
            .arg("-D")
            .arg(&data)
            .stdout(Stdio::null()));
        let mut settings = vec![
            "listen_addresses = '127.0.0.1'".to_owned(),
            format!("unix_socket_directories = '{}'", dir.path().display()),
            "fsync = off".to_owned(),
            "max_connections = 50".to_owned(),
        ];
        if let Some(tls) = tls {
            for (from, to) in [(&tls.cert, "server.pem"), (&tls.key, "server.key")] {
                std::fs::copy(from, data.join(to)).expect("copy the server certificate");
                if is_root() {
                    run(Command::new("chown").arg("postgres:postgres").arg(data.join(to)));
                }
                run(Command::new("chmod").arg("600").arg(data.join(to)));
            }
            settings.extend([
                "ssl = on".to_owned(),
                "ssl_cert_file = 'server.pem'".to_owned(),
                "ssl_key_file = 'server.key'".to_owned(),
            ]);
        } else {
            settings.push("ssl = off".to_owned());
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).expect("read postgresql.conf");
        text.push('\n');
        text.push_str(&settings.join("\n"));
        std::fs::write(&conf, text).expect("write postgresql.conf");
        for _ in 0..10 {
            let port = crate::closed_port();
            let mut child = as_postgres(&postgres_bin("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start postgres");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            loop {
                if child.try_wait().expect("wait for postgres").is_some() {
                    // The port was taken meanwhile: try another.
                    break;
                }
                let ready = Command::new(postgres_bin("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                    .status()
                    .is_ok_and(|s| s.success());
                if ready {
                    return PrivatePostgres { _dir: dir, port, child };
                }
                assert!(tokio::time::Instant::now() < deadline, "postgres did not start");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("could not start a private postgres");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@<host>:<port>/postgres` plus `params`.
    pub fn url(&self, host: &str, params: &str) -> String {
        let query = if params.is_empty() {
            String::new()
        } else {
            format!("?{params}")
        };
        format!("postgres://postgres@{host}:{}/postgres{query}", self.port)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // SIGQUIT: immediate shutdown (the cluster is thrown away anyway).
        let _ = Command::new("kill")
            .args(["-QUIT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}
