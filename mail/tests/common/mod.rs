//! Real mail servers for the watcher and sender tests: Dovecot (IMAP and
//! LMTP) and OpenSMTPD (SMTP, delivering to Dovecot's LMTP), each on free
//! loopback ports under a temporary directory, stopped by PID.
//!
//! Debian packages: `dovecot-imapd dovecot-lmtpd opensmtpd swaks`. A
//! missing one fails the test with the `apt-get install` line to run.

#![allow(dead_code)]

use std::fs::{self, File};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::AsRawFd as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The IMAP account every test uses.
pub const USER: &str = "printer@faxgate.test";
/// Its password.
pub const PASSWORD: &str = "s3cret-imap";
/// `nobody`: Dovecot refuses to keep mail as root.
const MAIL_UID: u32 = 65534;

/// Starts tracing output for a test (RUST_LOG, default info).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

/// The path of `tool`, looking in PATH and the sbin folders (where Debian
/// puts daemons); fails naming the package to install.
pub fn need(tool: &str, package: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| p.is_file());
    match found {
        Some(p) => p,
        None => panic!("`{tool}` is missing: apt-get install -y --no-install-recommends {package}"),
    }
}

/// Fails unless running as root (OpenSMTPD and Dovecot's privilege
/// separation need it).
pub fn need_root() {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("1");
    assert_eq!(
        euid, "0",
        "the mail tests run Dovecot and OpenSMTPD and need root"
    );
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Polls `f` every 20 ms until it holds or `limit` passes, without
/// blocking the runtime the watcher runs on.
pub async fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn wait_port(port: u16, what: &str, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not open port {port}; log:\n{}",
            fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Stops a daemon started with [`spawn_daemon`]: SIGTERM to its PID and a
/// wait of up to 5 s when `graceful`, then SIGKILL to its process group
/// (the daemon's own PID) so no helper process outlives the test.
fn stop_child(child: &mut Child, graceful: bool) {
    let pid = child.id() as libc::pid_t;
    if graceful && child.try_wait().ok().flatten().is_none() {
        // SAFETY: plain syscall on the PID of a child we have not reaped,
        // so it cannot have been reused.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline && child.try_wait().ok().flatten().is_none() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // SAFETY: as above; the group was created for this child.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    let _ = child.wait();
}

/// Starts `cmd` in a process group of its own, output to `log`.
fn spawn_daemon(cmd: &mut Command, log: &Path) -> Child {
    use std::os::unix::process::CommandExt as _;
    let out = File::create(log).unwrap();
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"))
}

/// What a Dovecot instance offers.
#[derive(Debug, Clone, Default)]
pub struct DovecotOptions {
    /// Serve TLS (a generated self-signed certificate): STARTTLS on the
    /// IMAP port and implicit TLS on the IMAPS port.
    pub tls: bool,
    /// Replace the post-login CAPABILITY list (e.g. without IDLE/MOVE).
    pub capabilities: Option<String>,
}

/// A running Dovecot with one user, IMAP on loopback and LMTP on a unix
/// socket.
pub struct Dovecot {
    dir: TempDir,
    child: Option<Child>,
    /// Plain/STARTTLS IMAP port.
    pub imap_port: u16,
    /// Implicit-TLS IMAP port (only listening with `tls`).
    pub imaps_port: u16,
    /// The LMTP socket for OpenSMTPD.
    pub lmtp: PathBuf,
    /// The generated server certificate (PEM), with `tls`.
    pub cert_pem: PathBuf,
    /// SHA-256 of that certificate.
    pub cert_fingerprint: [u8; 32],
    options: DovecotOptions,
}

impl Dovecot {
    /// Writes the config and starts Dovecot, waiting for its IMAP port.
    pub fn start(options: DovecotOptions) -> Self {
        need_root();
        need("dovecot", "dovecot-imapd dovecot-lmtpd");
        assert!(
            Path::new("/usr/lib/dovecot/imap").exists(),
            "Dovecot's IMAP server is missing: apt-get install -y --no-install-recommends dovecot-imapd"
        );
        assert!(
            Path::new("/usr/lib/dovecot/lmtp").exists(),
            "Dovecot's LMTP server is missing: apt-get install -y --no-install-recommends dovecot-lmtpd"
        );
        let dir = tempfile::Builder::new()
            .prefix("faxgate-dovecot-")
            .tempdir()
            .unwrap();
        // Dovecot's unprivileged processes (dovenull, nobody) must reach
        // their sockets and the mail under this folder.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["run", "state", "mail"] {
            fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::os::unix::fs::chown(dir.path().join("mail"), Some(MAIL_UID), Some(MAIL_UID)).unwrap();
        let mut me = Self {
            lmtp: dir.path().join("lmtp"),
            cert_pem: dir.path().join("cert.pem"),
            cert_fingerprint: [0; 32],
            imap_port: free_port(),
            imaps_port: free_port(),
            child: None,
            options,
            dir,
        };
        if me.options.tls {
            let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
            let certified = rcgen::generate_simple_self_signed(names).unwrap();
            fs::write(&me.cert_pem, certified.cert.pem()).unwrap();
            fs::write(
                me.dir.path().join("key.pem"),
                certified.signing_key.serialize_pem(),
            )
            .unwrap();
            me.cert_fingerprint = faxgate_relay::tls::fingerprint(certified.cert.der());
        }
        me.write_config();
        me.spawn();
        me
    }

    fn write_config(&self) {
        let d = self.dir.path().display();
        let passwd = format!("{USER}:{{PLAIN}}{PASSWORD}:{MAIL_UID}:{MAIL_UID}::{d}/mail::\n");
        fs::write(self.dir.path().join("passwd"), passwd).unwrap();
        let ssl = if self.options.tls {
            let mut s = format!("ssl = yes\nssl_cert = <{d}/cert.pem\nssl_key = <{d}/key.pem\n");
            if Path::new("/usr/share/dovecot/dh.pem").exists() {
                s.push_str("ssl_dh = </usr/share/dovecot/dh.pem\n");
            }
            s
        } else {
            "ssl = no\n".to_owned()
        };
        let imaps = if self.options.tls {
            format!(
                "address = 127.0.0.1\n    port = {}\n    ssl = yes",
                self.imaps_port
            )
        } else {
            "port = 0".to_owned()
        };
        let caps = match &self.options.capabilities {
            Some(c) => format!("protocol imap {{\n  imap_capability = {c}\n}}\n"),
            None => String::new(),
        };
        let conf = format!(
            r#"base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
{ssl}disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:{d}/mail/%n
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/passwd
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/passwd
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap}
  }}
  inet_listener imaps {{
    {imaps}
  }}
}}
service lmtp {{
  unix_listener {lmtp} {{
    mode = 0666
  }}
}}
{caps}"#,
            imap = self.imap_port,
            lmtp = self.lmtp.display(),
        );
        fs::write(self.dir.path().join("dovecot.conf"), conf).unwrap();
    }

    fn spawn(&mut self) {
        let dovecot = need("dovecot", "dovecot-imapd dovecot-lmtpd");
        let conf = self.dir.path().join("dovecot.conf");
        let out = self.dir.path().join("dovecot.out");
        let child = spawn_daemon(Command::new(dovecot).arg("-F").arg("-c").arg(conf), &out);
        self.child = Some(child);
        let log = self.dir.path().join("dovecot.log");
        wait_port(self.imap_port, "dovecot", &log);
        if self.options.tls {
            wait_port(self.imaps_port, "dovecot", &log);
        }
    }

    /// Stops Dovecot: SIGTERM by PID, then its process group is killed.
    /// (With clients in IDLE, Dovecot takes 10 s to shut down; the wait
    /// is capped at 5 s.)
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, true);
        }
    }

    /// Kills Dovecot and all its processes at once, as a crash or power
    /// cut would (connections drop without BYE), then starts it again on
    /// the same ports with the same mail.
    pub fn crash_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, false);
        }
        self.spawn();
    }

    /// The Maildir folder for `folder` (`INBOX` or a folder name).
    fn maildir(&self, folder: &str) -> PathBuf {
        // `mail_location` is `<dir>/mail/%n`, and `%n` is the user's local part.
        let local = USER.split('@').next().unwrap_or(USER);
        let root = self.dir.path().join("mail").join(local);
        if folder == "INBOX" {
            root
        } else {
            root.join(format!(".{folder}"))
        }
    }

    /// How many mails `folder` holds, read from the Maildir on disk.
    pub fn count(&self, folder: &str) -> usize {
        let dir = self.maildir(folder);
        ["new", "cur"]
            .iter()
            .map(|sub| fs::read_dir(dir.join(sub)).map(|d| d.count()).unwrap_or(0))
            .sum()
    }

    /// Makes `folder` unwritable for Dovecot's mail user (its Maildir
    /// folders owned by root, mode 0555), so saving into it fails, or
    /// writable again.
    pub fn set_writable(&self, folder: &str, writable: bool) {
        let dir = self.maildir(folder);
        let (owner, mode) = if writable {
            (MAIL_UID, 0o700)
        } else {
            (0, 0o555)
        };
        for sub in ["", "cur", "new", "tmp"] {
            let path = dir.join(sub);
            std::os::unix::fs::chown(&path, Some(owner), Some(owner)).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        }
    }

    /// Dovecot's log, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A running OpenSMTPD that accepts any recipient on a loopback port and
/// delivers to a Dovecot LMTP socket. OpenSMTPD keeps its queue in the
/// fixed `/var/spool/smtpd`, so only one may run per machine: the instance
/// holds an exclusive lock on a file for its lifetime, which serialises
/// the tests (and test binaries) that use it.
pub struct OpenSmtpd {
    child: Option<Child>,
    dir: TempDir,
    /// The SMTP port.
    pub port: u16,
    _lock: File,
}

const SMTPD_LOCK: &str = "/tmp/faxgate-opensmtpd.lock";
const SMTPD_QUEUE: &str = "/var/spool/smtpd";
const SMTPD_CONTROL: &str = "/var/run/smtpd.sock";

impl OpenSmtpd {
    /// Takes the machine-wide lock, then starts OpenSMTPD in the
    /// foreground (`-d`) on a free port, delivering everything to `lmtp`.
    pub fn start(lmtp: &Path) -> Self {
        Self::start_on(lmtp, None)
    }

    /// As [`OpenSmtpd::start`], on `port` if given (a port picked with
    /// [`free_port`] and left closed until now, for tests of clients that
    /// retry), else on a free one.
    pub fn start_on(lmtp: &Path, port: Option<u16>) -> Self {
        need_root();
        let smtpd = need("smtpd", "opensmtpd");
        // The tests submit some mails with swaks; check it up front.
        need("swaks", "swaks");
        let lock = File::create(SMTPD_LOCK).unwrap();
        // SAFETY: flock on a descriptor we own; blocks until no other
        // OpenSMTPD test holds the lock.
        let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
        assert_eq!(
            rc,
            0,
            "flock {SMTPD_LOCK}: {}",
            std::io::Error::last_os_error()
        );
        assert!(
            std::os::unix::net::UnixStream::connect(SMTPD_CONTROL).is_err(),
            "another OpenSMTPD is running here ({SMTPD_CONTROL} answers), and it would share \
             {SMTPD_QUEUE} with the test's: stop it first (smtpctl stop)"
        );
        // Envelopes left by an earlier run that was killed would be
        // delivered into this run's mailbox; only test runs use this
        // queue on a test machine, and we hold the lock.
        for sub in [
            "queue",
            "incoming",
            "temporary",
            "purge",
            "offline",
            "corrupt",
        ] {
            let _ = fs::remove_dir_all(Path::new(SMTPD_QUEUE).join(sub));
        }
        let dir = tempfile::Builder::new()
            .prefix("faxgate-smtpd-")
            .tempdir()
            .unwrap();
        let port = port.unwrap_or_else(free_port);
        let conf = format!(
            "listen on 127.0.0.1 port {port}\n\
             action \"lmtp\" lmtp \"{}\" rcpt-to virtual {{ \"@\" = \"nobody\" }}\n\
             match from any for any action \"lmtp\"\n",
            lmtp.display()
        );
        let conf_path = dir.path().join("smtpd.conf");
        fs::write(&conf_path, conf).unwrap();
        let log = dir.path().join("smtpd.log");
        let child = spawn_daemon(
            Command::new(smtpd).arg("-d").arg("-f").arg(&conf_path),
            &log,
        );
        wait_port(port, "smtpd", &log);
        Self {
            child: Some(child),
            dir,
            port,
            _lock: lock,
        }
    }

    /// OpenSMTPD's log, for failure messages.
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("smtpd.log")).unwrap_or_default()
    }

    /// Submits a raw message file with swaks, a third-party SMTP client.
    pub fn swaks(&self, from: &str, to: &str, message: &[u8]) {
        let swaks = need("swaks", "swaks");
        let file = self.dir.path().join("swaks-data.eml");
        fs::write(&file, message).unwrap();
        let out = Command::new(swaks)
            .args(["--server", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--from", from, "--to", to])
            .arg("--data")
            .arg(format!("@{}", file.display()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "swaks failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for OpenSmtpd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, true);
        }
        // The lock is released when `_lock` is closed, after this.
    }
}

/// A plain IMAP session to Dovecot for test-side checks and APPEND.
pub async fn imap(port: u16) -> async_imap::Session<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .unwrap();
    let mut client = async_imap::Client::new(tcp);
    client.read_response().await.unwrap();
    client
        .login(USER, PASSWORD)
        .await
        .map_err(|(e, _)| e)
        .unwrap()
}

/// Puts a raw message into INBOX with IMAP APPEND.
pub async fn append(port: u16, message: &[u8]) {
    let mut s = imap(port).await;
    s.append("INBOX", None, None, message).await.unwrap();
    s.logout().await.unwrap();
}

/// The keywords (flags starting with `$`) of every mail in `folder`.
pub async fn keywords(port: u16, folder: &str) -> Vec<Vec<String>> {
    use futures_util::TryStreamExt as _;
    let mut s = imap(port).await;
    let mailbox = s.select(folder).await.unwrap();
    let mut out = Vec::new();
    if mailbox.exists > 0 {
        let fetches: Vec<_> = s
            .fetch("1:*", "FLAGS")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        for f in fetches {
            let mut kws: Vec<String> = f
                .flags()
                .filter_map(|flag| match flag {
                    async_imap::types::Flag::Custom(c) => Some(c.to_string()),
                    _ => None,
                })
                .collect();
            kws.sort();
            out.push(kws);
        }
    }
    s.logout().await.unwrap();
    out
}

/// The raw messages in `folder`, in UID order.
pub async fn messages(port: u16, folder: &str) -> Vec<Vec<u8>> {
    use futures_util::TryStreamExt as _;
    let mut s = imap(port).await;
    let mailbox = s.select(folder).await.unwrap();
    let mut out = Vec::new();
    if mailbox.exists > 0 {
        let fetches: Vec<_> = s
            .fetch("1:*", "BODY.PEEK[]")
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        out.extend(fetches.iter().filter_map(|f| f.body().map(<[u8]>::to_vec)));
    }
    s.logout().await.unwrap();
    out
}
