//! The IMAP watcher actor: waits for command mail in the printer's
//! mailbox (IDLE, or polling where the server has no IDLE), verifies each
//! mail, hands valid commands to its owner and files every mail away.
//!
//! A valid command goes to the owner as an [`Incoming`] and the mail stays
//! in the mailbox until the owner acknowledges it; only then is it moved to
//! the processed folder. Anything else is moved to the quarantine folder
//! with an IMAP keyword naming the reason (`$faxgate-bad-signature`, ...).
//! Mails are never deleted.
//!
//! Replays: each accepted command's nonce is remembered until the command
//! expires, before the command is handed over. With
//! [`WatcherConfig::nonce_file`] the nonces are on disk
//! ([`NonceCache::open`]), so a restarted agent refuses a command it has
//! already been handed: a command is handed over at most once. (A crash
//! between the hand-over and the acknowledgement thus files that mail as
//! a replay after the restart.) If the nonce cannot be written, the
//! command is not handed over: the session ends with
//! [`WatcherError::NonceNotRecorded`], the mail stays in the mailbox, and
//! it is tried again after a growing delay. A command the owner drops
//! unacknowledged has its nonce forgotten, also on disk, and is offered
//! again. A shutdown after the hand-over keeps the nonce, as a crash
//! would: the owner may have acted on the command, so after a restart its
//! mail is filed as a replay. Without a nonce file the nonces live in
//! memory, and a command acknowledged just before a crash can come again
//! after the restart.
//!
//! A mail that cannot be filed (the server refuses the move, say the
//! processed folder is over quota) does not hold up the mails after it:
//! it stays in the mailbox, is logged once, and its move is tried again
//! after a delay that grows with each failure and that a reconnect does
//! not reset.

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use async_imap::extensions::idle::IdleResponse;
use async_imap::types::UnsolicitedResponse;
use faxgate_config::Secret;
use futures_util::TryStreamExt as _;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::command::{self, Command, MAX_MESSAGE_SIZE, NonceCache, Verifier};
use crate::error::{CommandError, ConfigError, WatcherError};
use crate::tls::{self, Tls, Trust};

/// The longest IDLE allowed: RFC 2177 servers may log a client off after
/// 30 minutes, so IDLE is re-issued before that.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(29 * 60);

/// Everything the watcher needs to reach and use one printer's mailbox.
#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// IMAP server host name or IP literal.
    pub host: String,
    /// IMAP port (993 for [`Tls::Implicit`], 143 otherwise).
    pub port: u16,
    /// Connection security.
    pub tls: Tls,
    /// Which server certificates are trusted.
    pub trust: Trust,
    /// Login name.
    pub user: String,
    /// Login password; prints as `MASKED`.
    pub password: Secret<String>,
    /// This printer's name: commands naming another printer are refused.
    pub printer: String,
    /// The mailbox command mail arrives in.
    pub mailbox: String,
    /// Where handled commands go (created if missing).
    pub processed_folder: String,
    /// Where refused mails go (created if missing).
    pub quarantine_folder: String,
    /// Use IDLE when the server offers it; when false, always poll.
    pub use_idle: bool,
    /// How often to look for mail when not using IDLE.
    pub poll_interval: Duration,
    /// How long one IDLE lasts before it is re-issued (at most
    /// [`MAX_IDLE_TIMEOUT`]).
    pub idle_timeout: Duration,
    /// Deadline for connecting and for each IMAP command.
    pub io_timeout: Duration,
    /// First delay before reconnecting after a failure.
    pub backoff_min: Duration,
    /// Longest delay between reconnection attempts.
    pub backoff_max: Duration,
    /// How many unexpired nonces are remembered against replays.
    pub nonce_capacity: usize,
    /// Where the nonces are kept across restarts (see [`NonceCache::open`]);
    /// `None` keeps them in memory only, so a restart forgets them.
    pub nonce_file: Option<PathBuf>,
}

impl WatcherConfig {
    /// A config with the defaults: implicit TLS verified against the
    /// system roots, `INBOX`, folders `faxgate-processed` and
    /// `faxgate-quarantine`, IDLE for 25 min, polling every 60 s, backoff
    /// from 1 s to 5 min.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        password: Secret<String>,
        printer: impl Into<String>,
    ) -> Self {
        Self {
            host: host.into(),
            port,
            tls: Tls::Implicit,
            trust: Trust::SystemRoots,
            user: user.into(),
            password,
            printer: printer.into(),
            mailbox: "INBOX".to_owned(),
            processed_folder: "faxgate-processed".to_owned(),
            quarantine_folder: "faxgate-quarantine".to_owned(),
            use_idle: true,
            poll_interval: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(25 * 60),
            io_timeout: Duration::from_secs(60),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            nonce_capacity: NonceCache::DEFAULT_CAPACITY,
            nonce_file: None,
        }
    }

    /// Checks the values that cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field, reason: &str| {
            Err(ConfigError::Invalid {
                field,
                reason: reason.to_owned(),
            })
        };
        if self.host.is_empty() {
            return invalid("host", "must not be empty");
        }
        tls::check_plain_allowed(self.tls, &self.host)?;
        if self.user.is_empty() {
            return invalid("user", "must not be empty");
        }
        if self.printer.is_empty() {
            return invalid("printer", "must not be empty");
        }
        let folders = [
            &self.mailbox,
            &self.processed_folder,
            &self.quarantine_folder,
        ];
        if folders.iter().any(|f| f.is_empty()) {
            return invalid("mailbox", "mailbox and folder names must not be empty");
        }
        if folders[0] == folders[1] || folders[0] == folders[2] || folders[1] == folders[2] {
            return invalid(
                "processed_folder",
                "mailbox, processed and quarantine folders must differ",
            );
        }
        if self.idle_timeout.is_zero() || self.idle_timeout > MAX_IDLE_TIMEOUT {
            return invalid("idle_timeout", "must be more than 0 and at most 29 min");
        }
        if self.poll_interval.is_zero() || self.io_timeout.is_zero() {
            return invalid(
                "poll_interval",
                "poll_interval and io_timeout must be more than 0",
            );
        }
        if self.backoff_min.is_zero() || self.backoff_min > self.backoff_max {
            return invalid("backoff_min", "must be more than 0 and at most backoff_max");
        }
        if self.nonce_capacity == 0 {
            return invalid("nonce_capacity", "must be more than 0");
        }
        if self
            .nonce_file
            .as_ref()
            .is_some_and(|p| p.file_name().is_none())
        {
            return invalid("nonce_file", "must name a file");
        }
        Ok(())
    }
}

/// A valid command handed to the owner. The mail stays in the mailbox
/// until `ack` is sent; dropping `ack` unsent leaves it there to be offered
/// again later.
#[derive(Debug)]
pub struct Incoming {
    /// The verified command.
    pub command: Command,
    /// Send `()` once the command has been acted on (or durably recorded).
    pub ack: oneshot::Sender<()>,
}

impl Incoming {
    /// Acknowledges the command, letting the watcher file the mail.
    pub fn ack(self) {
        // An error only means the watcher has stopped; the mail then stays
        // in the mailbox and is offered again, which is what we want.
        let _ = self.ack.send(());
    }
}

/// What the watcher is doing now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatcherState {
    /// Connecting and logging in.
    #[default]
    Connecting,
    /// Reading and filing the mails in the mailbox.
    Processing,
    /// Waiting for the owner to take or acknowledge a command.
    WaitingForOwner,
    /// In IMAP IDLE, waiting for new mail.
    Idling,
    /// Sleeping until the next poll (server without IDLE, or IDLE off).
    Polling,
    /// Waiting before reconnecting after a failure.
    Backoff,
    /// Stopped for good (cancelled, or the owner dropped the receiver).
    Stopped,
}

/// A snapshot of the watcher, for the panel, the status command and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WatcherStatus {
    /// What it is doing.
    pub state: WatcherState,
    /// IMAP sessions established so far (a reconnect adds one).
    pub sessions: u64,
    /// Whether the current session waits with IDLE (false: polling).
    pub using_idle: bool,
    /// Commands acknowledged by the owner and filed as processed.
    pub delivered: u64,
    /// Mails moved to quarantine.
    pub quarantined: u64,
    /// The error that ended the last session, if any.
    pub last_error: Option<String>,
}

/// The owner's handle: status and shutdown. The commands themselves come
/// through the receiver returned by [`WatcherHandle::spawn`].
#[derive(Debug, Clone)]
pub struct WatcherHandle {
    status: watch::Receiver<WatcherStatus>,
    cancel: CancellationToken,
}

impl WatcherHandle {
    /// Validates `config`, builds its TLS settings, loads the nonce file
    /// if there is one (blocking file I/O, at start-up) and spawns the
    /// watcher on the current tokio runtime (so it must be called inside
    /// one; it panics otherwise, like `tokio::spawn`). The watcher stops when
    /// `cancel` (or [`WatcherHandle::shutdown`]) fires, or when the
    /// returned receiver is dropped.
    pub fn spawn(
        config: WatcherConfig,
        verifier: Verifier,
        cancel: CancellationToken,
    ) -> Result<(Self, mpsc::Receiver<Incoming>), ConfigError> {
        config.validate()?;
        let tls = match config.tls {
            Tls::None => None,
            Tls::Implicit | Tls::StartTls => Some(TlsSetup {
                connector: TlsConnector::from(tls::client_config(&config.trust)?),
                name: faxgate_relay::tls::server_name(&config.host)?,
            }),
        };
        let nonces = match &config.nonce_file {
            Some(path) => NonceCache::open(path, config.nonce_capacity, SystemTime::now())?,
            None => NonceCache::new(config.nonce_capacity),
        };
        let (tx, rx) = mpsc::channel(4);
        let (status_tx, status_rx) = watch::channel(WatcherStatus::default());
        let cancel = cancel.child_token();
        let span = info_span!(
            "mail_watcher",
            printer = %config.printer,
            server = %format!("{}:{}", config.host, config.port),
            user = %config.user,
        );
        let actor = WatcherActor {
            nonces,
            store_failures: 0,
            config,
            verifier,
            tls,
            tx,
            status: status_tx,
            cancel: cancel.clone(),
            decided: HashMap::new(),
            unfiled: HashMap::new(),
        };
        tokio::spawn(actor.run().instrument(span));
        Ok((
            Self {
                status: status_rx,
                cancel,
            },
            rx,
        ))
    }

    /// The current status.
    pub fn status(&self) -> WatcherStatus {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn subscribe(&self) -> watch::Receiver<WatcherStatus> {
        self.status.clone()
    }

    /// Asks the watcher to stop at its next safe point (a mail half filed
    /// is finished first).
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }

    /// Resolves once the watcher has stopped.
    pub async fn stopped(&self) {
        let mut rx = self.status.clone();
        // An error means the task is gone, which is stopped too.
        let _ = rx.wait_for(|s| s.state == WatcherState::Stopped).await;
    }
}

struct TlsSetup {
    connector: TlsConnector,
    name: ServerName<'static>,
}

/// What the IMAP connection is made of: TCP, or TLS over TCP.
trait ImapIo: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug> ImapIo for T {}
type ImapSession = async_imap::Session<Box<dyn ImapIo>>;
type ImapClient = async_imap::Client<Box<dyn ImapIo>>;

/// Why a session ended without an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Cancelled,
    OwnerGone,
}

/// What was decided for a mail whose move may not have happened yet; kept
/// so a reconnect finishes the move instead of judging the mail again
/// (which would call an acknowledged command a replay).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Processed,
    Quarantine(&'static str),
}

enum Delivery {
    Acked,
    Dropped,
    /// Stopped before the owner got the command.
    Stopped(Stop),
    /// Stopped after the owner got the command but before it acknowledged
    /// it: the owner may have acted on it.
    StoppedAfterHandOver(Stop),
}

/// How a pass over the mailbox ended.
enum Pass {
    Stopped(Stop),
    /// Every mail was looked at; `progressed` if one was filed or a
    /// command acknowledged (so mail may have arrived unannounced).
    Done {
        progressed: bool,
    },
}

/// A mail whose move failed: when to try again.
#[derive(Debug, Clone, Copy)]
struct Unfiled {
    failures: u32,
    retry_at: Instant,
}

/// Server capabilities the watcher cares about.
#[derive(Debug, Clone, Copy)]
struct Caps {
    idle: bool,
    mv: bool,
    uidplus: bool,
}

struct WatcherActor {
    config: WatcherConfig,
    verifier: Verifier,
    tls: Option<TlsSetup>,
    tx: mpsc::Sender<Incoming>,
    status: watch::Sender<WatcherStatus>,
    cancel: CancellationToken,
    nonces: NonceCache,
    /// Nonce-file failures in a row; they back off like failed sessions
    /// (a session that fails on one still counts as established).
    store_failures: u32,
    /// Keyed by (UIDVALIDITY, UID).
    decided: HashMap<(u32, u32), Decision>,
    /// Decided mails whose move failed, keyed like `decided`; kept across
    /// sessions so a reconnect does not retry them early.
    unfiled: HashMap<(u32, u32), Unfiled>,
}

impl WatcherActor {
    async fn run(mut self) {
        let mut failures: u32 = 0;
        loop {
            self.set_state(WatcherState::Connecting);
            match self.session(&mut failures).await {
                Ok(stop) => {
                    info!(?stop, "Mail watcher stopping.");
                    break;
                }
                Err(e) => {
                    match e {
                        WatcherError::Login { .. } => {
                            error!(error = %e, "IMAP login refused; check the mail account settings.");
                        }
                        WatcherError::NonceNotRecorded { uid, .. } => {
                            self.store_failures = self.store_failures.saturating_add(1);
                            error!(
                                uid,
                                error = %e,
                                "Cannot record a command's nonce; the mail stays in the mailbox \
                                 and is tried again."
                            );
                        }
                        _ => warn!(error = %e, "IMAP session failed; reconnecting."),
                    }
                    let text = e.to_string();
                    self.status.send_modify(|s| s.last_error = Some(text));
                }
            }
            let delay = backoff_delay(
                failures.max(self.store_failures.saturating_sub(1)),
                self.config.backoff_min,
                self.config.backoff_max,
                rand::random::<f64>(),
            );
            failures = failures.saturating_add(1);
            self.set_state(WatcherState::Backoff);
            debug!(?delay, failures, "Waiting before reconnecting.");
            tokio::select! {
                () = self.cancel.cancelled() => {
                    info!("Mail watcher stopping.");
                    break;
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
        self.set_state(WatcherState::Stopped);
    }

    fn set_state(&self, state: WatcherState) {
        self.status.send_if_modified(|s| {
            let changed = s.state != state;
            s.state = state;
            changed
        });
    }

    /// One IMAP session: connect, prepare, then process and wait until an
    /// error (returned) or a stop.
    async fn session(&mut self, failures: &mut u32) -> Result<Stop, WatcherError> {
        let mut session = tokio::select! {
            () = self.cancel.cancelled() => return Ok(Stop::Cancelled),
            r = tokio::time::timeout(self.config.io_timeout, self.connect()) => {
                r.map_err(|_| WatcherError::Timeout { during: "connect and login".into() })??
            }
        };
        let io = self.config.io_timeout;
        let caps = step(io, "CAPABILITY", session.capabilities()).await?;
        let caps = Caps {
            idle: caps.has_str("IDLE"),
            mv: caps.has_str("MOVE"),
            uidplus: caps.has_str("UIDPLUS"),
        };
        self.ensure_folders(&mut session).await?;
        let mailbox = self.config.mailbox.clone();
        let selected = step(io, "SELECT", session.select(&mailbox)).await?;
        let validity = selected.uid_validity.unwrap_or(0);
        // UIDs of another UIDVALIDITY name other mails (or none) now.
        self.decided.retain(|(v, _), _| *v == validity);
        self.unfiled.retain(|(v, _), _| *v == validity);
        let using_idle = caps.idle && self.config.use_idle;
        *failures = 0;
        self.status.send_modify(|s| {
            s.sessions += 1;
            s.using_idle = using_idle;
        });
        info!(
            idle = using_idle,
            r#move = caps.mv,
            uidplus = caps.uidplus,
            "IMAP session ready."
        );
        if caps.idle && !self.config.use_idle {
            debug!("IDLE is off by configuration; polling.");
        } else if !caps.idle {
            info!(poll_interval = ?self.config.poll_interval, "Server has no IDLE; polling.");
        }
        loop {
            let progressed = match self.process_mailbox(&mut session, validity, caps).await? {
                Pass::Stopped(stop) => {
                    logout(session, io).await;
                    return Ok(stop);
                }
                Pass::Done { progressed } => progressed,
            };
            // Mail that arrived while we worked was announced in a reply
            // to one of our commands; IDLE would not announce it again.
            // The library keeps only 100 such replies and drops the rest,
            // and each move adds two, so after a pass that filed anything
            // the announcement may be lost: search again until a pass
            // finds nothing to do.
            if new_mail_announced(&session) || progressed {
                continue;
            }
            // A mail whose move failed is tried again at its time.
            let wake_at = self.unfiled.values().map(|u| u.retry_at).min();
            let cancelled;
            (session, cancelled) = if using_idle {
                self.idle(session, wake_at).await?
            } else {
                self.poll(session, wake_at).await?
            };
            if cancelled {
                logout(session, io).await;
                return Ok(Stop::Cancelled);
            }
        }
    }

    async fn connect(&self) -> Result<ImapSession, WatcherError> {
        let c = &self.config;
        let tcp = TcpStream::connect((c.host.as_str(), c.port))
            .await
            .map_err(|source| WatcherError::Connect {
                addr: format!("{}:{}", c.host, c.port),
                source,
            })?;
        // Latency matters more than packet count for a few short commands.
        let _ = tcp.set_nodelay(true);
        // A server or NAT that vanishes without a FIN would otherwise leave
        // IDLE waiting until `idle_timeout`; keepalive probes find it in
        // about two minutes.
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(Duration::from_secs(60))
            .with_interval(Duration::from_secs(15))
            .with_retries(4);
        if let Err(e) = socket2::SockRef::from(&tcp).set_tcp_keepalive(&keepalive) {
            debug!(error = %e, "Cannot enable TCP keepalive.");
        }
        let mut client = match (c.tls, &self.tls) {
            (Tls::Implicit, Some(tls)) => {
                ImapClient::new(Box::new(self.handshake(tcp, tls).await?))
            }
            _ => ImapClient::new(Box::new(tcp)),
        };
        let greeting = client
            .read_response()
            .await
            .map_err(|e| WatcherError::Imap {
                during: "greeting".into(),
                source: e.into(),
            })?;
        if greeting.is_none() {
            return Err(WatcherError::Protocol {
                during: "greeting".into(),
                what: "connection closed before the greeting".into(),
            });
        }
        if let (Tls::StartTls, Some(tls)) = (c.tls, &self.tls) {
            client
                .run_command_and_check_ok("STARTTLS", None)
                .await
                .map_err(|source| WatcherError::Imap {
                    during: "STARTTLS".into(),
                    source,
                })?;
            // Bytes the server sent after its OK are dropped with the
            // plain client, as RFC 3501 section 6.2.1 requires.
            let plain = client.into_inner();
            client = ImapClient::new(Box::new(self.handshake(plain, tls).await?));
        }
        client
            .login(&c.user, c.password.expose())
            .await
            .map_err(|(source, _)| WatcherError::Login {
                user: c.user.clone(),
                source,
            })
    }

    async fn handshake<S>(
        &self,
        stream: S,
        tls: &TlsSetup,
    ) -> Result<tokio_rustls::client::TlsStream<S>, WatcherError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        tls.connector
            .connect(tls.name.clone(), stream)
            .await
            .map_err(|source| WatcherError::Tls {
                host: self.config.host.clone(),
                source,
            })
    }

    async fn ensure_folders(&self, session: &mut ImapSession) -> Result<(), WatcherError> {
        let io = self.config.io_timeout;
        let names: Vec<String> = step(io, "LIST", async {
            let names: Vec<_> = session
                .list(Some(""), Some("*"))
                .await?
                .try_collect()
                .await?;
            Ok(names.iter().map(|n| n.name().to_owned()).collect())
        })
        .await?;
        for folder in [
            &self.config.processed_folder,
            &self.config.quarantine_folder,
        ] {
            if !names.iter().any(|n| n == folder) {
                step(io, "CREATE", session.create(folder)).await?;
                info!(folder = %folder, "Created IMAP folder.");
            }
        }
        Ok(())
    }

    /// Reads and files every mail in the mailbox, oldest UID first.
    async fn process_mailbox(
        &mut self,
        session: &mut ImapSession,
        validity: u32,
        caps: Caps,
    ) -> Result<Pass, WatcherError> {
        let io = self.config.io_timeout;
        let mut progressed = false;
        self.set_state(WatcherState::Processing);
        // Whatever was announced so far is covered by the search below.
        new_mail_announced(session);
        let mut uids: Vec<u32> = step(io, "UID SEARCH", session.uid_search("ALL"))
            .await?
            .into_iter()
            .collect();
        uids.sort_unstable();
        // Mails gone meanwhile (another client moved them) need no filing.
        let present = |(v, u): &(u32, u32)| *v != validity || uids.binary_search(u).is_ok();
        self.decided.retain(|k, _| present(k));
        self.unfiled.retain(|k, _| present(k));
        for uid in uids {
            if self.decided.contains_key(&(validity, uid)) {
                let due = self
                    .unfiled
                    .get(&(validity, uid))
                    .is_none_or(|u| u.retry_at <= Instant::now());
                if due {
                    progressed |= self.file_or_defer(session, validity, uid, caps).await?;
                }
                continue;
            }
            let verdict = match fetch(session, io, uid).await? {
                // Gone meanwhile (another client moved it).
                None => continue,
                Some(Fetched::TooLarge(size)) => Err(CommandError::TooLarge {
                    size,
                    max: MAX_MESSAGE_SIZE,
                }),
                Some(Fetched::Body(raw)) => command::parse_and_verify(
                    &raw,
                    &self.verifier,
                    &self.config.printer,
                    SystemTime::now(),
                    &mut self.nonces,
                ),
            };
            match verdict {
                Err(source @ CommandError::NonceNotRecorded { .. }) => {
                    // Not the mail's fault: leave it for the next session.
                    return Err(WatcherError::NonceNotRecorded { uid, source });
                }
                Ok(cmd) => {
                    self.store_failures = 0;
                    let nonce = cmd.nonce.clone();
                    info!(
                        uid,
                        kind = %cmd.kind,
                        jobs = ?cmd.job_ids,
                        proxy = %cmd.proxy_uri,
                        "Command mail verified; handing it over."
                    );
                    match self.deliver(cmd).await {
                        Delivery::Acked => {
                            self.decided.insert((validity, uid), Decision::Processed);
                            self.file_or_defer(session, validity, uid, caps).await?;
                            progressed = true;
                        }
                        Delivery::Dropped => {
                            self.forget(uid, &nonce);
                            warn!(
                                uid,
                                "Command was not acknowledged; the mail stays in the mailbox."
                            );
                        }
                        Delivery::Stopped(stop) => {
                            self.forget(uid, &nonce);
                            return Ok(Pass::Stopped(stop));
                        }
                        Delivery::StoppedAfterHandOver(stop) => {
                            // The owner may have acted: keep the nonce, so
                            // the mail is not handed over a second time.
                            warn!(
                                uid,
                                "Stopping with a command handed over but not acknowledged; \
                                 its mail stays in the mailbox and will not be offered again."
                            );
                            return Ok(Pass::Stopped(stop));
                        }
                    }
                    self.set_state(WatcherState::Processing);
                }
                Err(reason) => {
                    warn!(uid, reason = reason.code(), error = %reason, "Command mail quarantined.");
                    let decision = Decision::Quarantine(reason.code());
                    self.decided.insert((validity, uid), decision);
                    progressed |= self.file_or_defer(session, validity, uid, caps).await?;
                }
            }
            if self.cancel.is_cancelled() {
                return Ok(Pass::Stopped(Stop::Cancelled));
            }
        }
        Ok(Pass::Done { progressed })
    }

    /// Files a decided mail. If the server refuses the move, the mail is
    /// left for a later try (after a delay growing per failure) and the
    /// pass goes on: `Ok(false)`. Other errors end the session, and the
    /// mail waits its delay in the next one too. `Ok(true)` once filed.
    async fn file_or_defer(
        &mut self,
        session: &mut ImapSession,
        validity: u32,
        uid: u32,
        caps: Caps,
    ) -> Result<bool, WatcherError> {
        let key = (validity, uid);
        let Some(decision) = self.decided.get(&key).copied() else {
            return Ok(false);
        };
        let e = match self.file(session, uid, decision, caps).await {
            Ok(()) => {
                self.decided.remove(&key);
                if let Some(u) = self.unfiled.remove(&key) {
                    info!(uid, failures = u.failures, "Mail filed after all.");
                }
                self.status.send_modify(|s| match decision {
                    Decision::Processed => s.delivered += 1,
                    Decision::Quarantine(_) => s.quarantined += 1,
                });
                return Ok(true);
            }
            Err(e) => e,
        };
        let failures = self.unfiled.get(&key).map_or(0, |u| u.failures);
        let delay = backoff_delay(
            failures,
            self.config.backoff_min,
            self.config.backoff_max,
            rand::random::<f64>(),
        );
        self.unfiled.insert(
            key,
            Unfiled {
                failures: failures.saturating_add(1),
                retry_at: Instant::now() + delay,
            },
        );
        if failures == 0 {
            error!(
                uid,
                error = %e,
                "Cannot file the mail; it stays in the mailbox and is tried again later \
                 (check the folder's quota and rights)."
            );
        } else {
            debug!(uid, failures, ?delay, error = %e, "Filing the mail failed again.");
        }
        let refused = matches!(
            &e,
            WatcherError::Imap {
                source: async_imap::error::Error::No(_) | async_imap::error::Error::Bad(_),
                ..
            }
        );
        if refused { Ok(false) } else { Err(e) }
    }

    /// Forgets the nonce of a command that was not acknowledged, so its
    /// mail is offered again.
    fn forget(&mut self, uid: u32, nonce: &str) {
        if let Err(e) = self.nonces.forget(nonce) {
            error!(
                uid,
                error = %e,
                "Cannot forget an unacknowledged command's nonce in the nonce file; after a \
                 restart its mail would be filed as a replay."
            );
        }
    }

    /// Hands a command to the owner and waits for the acknowledgement.
    async fn deliver(&mut self, command: Command) -> Delivery {
        self.set_state(WatcherState::WaitingForOwner);
        let (ack, acked) = oneshot::channel();
        tokio::select! {
            () = self.cancel.cancelled() => return Delivery::Stopped(Stop::Cancelled),
            sent = self.tx.send(Incoming { command, ack }) => {
                if sent.is_err() {
                    return Delivery::Stopped(Stop::OwnerGone);
                }
            }
        }
        // Biased: an acknowledgement already sent wins over a shutdown.
        tokio::select! {
            biased;
            r = acked => match r {
                Ok(()) => Delivery::Acked,
                Err(_) => Delivery::Dropped,
            },
            () = self.cancel.cancelled() => Delivery::StoppedAfterHandOver(Stop::Cancelled),
        }
    }

    /// Moves a mail to its folder: UID MOVE where the server has MOVE,
    /// else COPY, flag \Deleted and expunge. A quarantined mail first gets
    /// its reason as a keyword.
    async fn file(
        &mut self,
        session: &mut ImapSession,
        uid: u32,
        decision: Decision,
        caps: Caps,
    ) -> Result<(), WatcherError> {
        let io = self.config.io_timeout;
        let uid_set = uid.to_string();
        let folder = match decision {
            Decision::Processed => self.config.processed_folder.clone(),
            Decision::Quarantine(code) => {
                let flags = format!("+FLAGS.SILENT ($faxgate-{code})");
                let stored = step(io, "UID STORE keyword", async {
                    session
                        .uid_store(&uid_set, &flags)
                        .await?
                        .try_collect::<Vec<_>>()
                        .await
                })
                .await;
                if let Err(e) = stored {
                    // A server without keywords still gets the mail filed.
                    debug!(uid, error = %e, "Could not set the reason keyword.");
                }
                self.config.quarantine_folder.clone()
            }
        };
        if caps.mv {
            step(io, "UID MOVE", session.uid_mv(&uid_set, &folder)).await?;
        } else {
            step(io, "UID COPY", session.uid_copy(&uid_set, &folder)).await?;
            step(io, "UID STORE \\Deleted", async {
                session
                    .uid_store(&uid_set, "+FLAGS.SILENT (\\Deleted)")
                    .await?
                    .try_collect::<Vec<_>>()
                    .await
            })
            .await?;
            if caps.uidplus {
                step(io, "UID EXPUNGE", async {
                    session
                        .uid_expunge(&uid_set)
                        .await?
                        .try_collect::<Vec<_>>()
                        .await
                })
                .await?;
            } else {
                step(io, "EXPUNGE", async {
                    session.expunge().await?.try_collect::<Vec<_>>().await
                })
                .await?;
            }
        }
        debug!(uid, folder = %folder, "Mail filed.");
        Ok(())
    }

    /// IDLE until the server reports a change, `idle_timeout` passes (or
    /// `wake_at`, if sooner) or the watcher is cancelled. Returns the
    /// session and whether cancelled.
    async fn idle(
        &self,
        session: ImapSession,
        wake_at: Option<Instant>,
    ) -> Result<(ImapSession, bool), WatcherError> {
        let until = wake_limit(self.config.idle_timeout, wake_at);
        let io = self.config.io_timeout;
        let mut handle = session.idle();
        step(io, "IDLE", handle.init()).await?;
        self.set_state(WatcherState::Idling);
        let cancelled = {
            // The library's own timeout restarts on every "* OK Still
            // here", so the re-IDLE deadline is kept here.
            let (wait, _interrupt) = handle.wait_with_timeout(self.config.idle_timeout);
            tokio::select! {
                () = self.cancel.cancelled() => true,
                () = tokio::time::sleep_until(until) => false,
                r = wait => match r {
                    Ok(IdleResponse::NewData(data)) => {
                        debug!(response = ?data.parsed(), "IDLE: mailbox changed.");
                        false
                    }
                    Ok(IdleResponse::Timeout | IdleResponse::ManualInterrupt) => false,
                    Err(source) => return Err(WatcherError::Imap { during: "IDLE".into(), source }),
                },
            }
        };
        let session = step(io, "IDLE DONE", handle.done()).await?;
        Ok((session, cancelled))
    }

    /// Sleeps one poll interval (or until `wake_at`, if sooner), then
    /// NOOP so the server reports new mail.
    async fn poll(
        &self,
        mut session: ImapSession,
        wake_at: Option<Instant>,
    ) -> Result<(ImapSession, bool), WatcherError> {
        self.set_state(WatcherState::Polling);
        let until = wake_limit(self.config.poll_interval, wake_at);
        tokio::select! {
            () = self.cancel.cancelled() => return Ok((session, true)),
            () = tokio::time::sleep_until(until) => {}
        }
        step(self.config.io_timeout, "NOOP", session.noop()).await?;
        Ok((session, false))
    }
}

enum Fetched {
    Body(Vec<u8>),
    TooLarge(u64),
}

/// Fetches one mail without setting \Seen, unless it is too large to be a
/// command. `None` if the UID is gone.
async fn fetch(
    session: &mut ImapSession,
    io: Duration,
    uid: u32,
) -> Result<Option<Fetched>, WatcherError> {
    let uid_set = uid.to_string();
    let sizes = step(io, "UID FETCH size", async {
        session
            .uid_fetch(&uid_set, "RFC822.SIZE")
            .await?
            .try_collect::<Vec<_>>()
            .await
    })
    .await?;
    // Unsolicited FETCH responses for other mails may come along.
    let Some(size) = sizes.iter().find(|f| f.uid == Some(uid)).map(|f| f.size) else {
        return Ok(None);
    };
    if let Some(size) = size.map(u64::from).filter(|s| *s > MAX_MESSAGE_SIZE) {
        return Ok(Some(Fetched::TooLarge(size)));
    }
    let fetches = step(io, "UID FETCH body", async {
        session
            .uid_fetch(&uid_set, "BODY.PEEK[]")
            .await?
            .try_collect::<Vec<_>>()
            .await
    })
    .await?;
    Ok(fetches
        .iter()
        .find(|f| f.uid == Some(uid))
        .and_then(|f| f.body())
        .map(|b| Fetched::Body(b.to_vec())))
}

/// Drains the responses the server sent unasked (EXISTS, EXPUNGE, ...)
/// and tells whether one announced new mail.
fn new_mail_announced(session: &ImapSession) -> bool {
    let mut announced = false;
    while let Ok(response) = session.unsolicited_responses.try_recv() {
        announced |= matches!(response, UnsolicitedResponse::Exists(_));
    }
    announced
}

/// The end of a wait of `limit` from now, brought forward to `wake_at`.
fn wake_limit(limit: Duration, wake_at: Option<Instant>) -> Instant {
    let end = Instant::now() + limit;
    wake_at.map_or(end, |w| w.min(end))
}

/// Runs one IMAP step under the I/O deadline, naming it in the error.
async fn step<T>(
    io: Duration,
    during: &str,
    fut: impl Future<Output = Result<T, async_imap::error::Error>>,
) -> Result<T, WatcherError> {
    match tokio::time::timeout(io, fut).await {
        Err(_) => Err(WatcherError::Timeout {
            during: during.to_owned(),
        }),
        Ok(Err(source)) => Err(WatcherError::Imap {
            during: during.to_owned(),
            source,
        }),
        Ok(Ok(v)) => Ok(v),
    }
}

async fn logout(mut session: ImapSession, io: Duration) {
    if let Err(e) = step(io, "LOGOUT", session.logout()).await {
        debug!(error = %e, "LOGOUT failed; closing anyway.");
    }
}

/// Exponential backoff with "equal jitter": after `failures` failures the
/// cap is `min * 2^failures` (at most `max`), and the delay lies in
/// `[cap/2, cap]`, placed by `jitter` in `[0, 1]`. Many agents losing the
/// same server thus spread out instead of reconnecting in step.
pub(crate) fn backoff_delay(failures: u32, min: Duration, max: Duration, jitter: f64) -> Duration {
    let cap = min
        .saturating_mul(2u32.saturating_pow(failures.min(31)))
        .min(max);
    cap / 2 + cap.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> WatcherConfig {
        WatcherConfig::new(
            "127.0.0.1",
            143,
            "printer",
            Secret::new("pw".to_owned()),
            "expp1%abc.com",
        )
    }

    #[test]
    fn backoff_grows_caps_and_jitters() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(backoff_delay(0, min, max, 0.0), Duration::from_millis(50));
        assert_eq!(backoff_delay(0, min, max, 1.0), Duration::from_millis(100));
        assert_eq!(backoff_delay(3, min, max, 1.0), Duration::from_millis(800));
        assert_eq!(backoff_delay(10, min, max, 1.0), max);
        assert_eq!(
            backoff_delay(u32::MAX, min, max, 0.5),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn config_validation() {
        let mut c = config();
        c.tls = Tls::None;
        assert!(c.validate().is_ok());
        c.host = "mail.example.net".into();
        assert!(c.validate().is_err(), "plain IMAP to a remote host");
        let mut c = config();
        c.idle_timeout = Duration::from_secs(30 * 60);
        assert!(c.validate().is_err());
        let mut c = config();
        c.processed_folder = "INBOX".into();
        assert!(c.validate().is_err());
        let mut c = config();
        c.backoff_min = Duration::from_secs(10);
        c.backoff_max = Duration::from_secs(1);
        assert!(c.validate().is_err());
        let mut c = config();
        c.nonce_file = Some("/".into());
        assert!(c.validate().is_err());
        let shown = format!("{:?}", config());
        assert!(
            shown.contains("MASKED") && !shown.contains("\"pw\""),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn a_corrupt_nonce_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nonces");
        std::fs::write(&path, "00112233445566778899aabbccddeeff someday\n").unwrap();
        let mut c = config();
        c.tls = Tls::None;
        c.nonce_file = Some(path.clone());
        let verifier = Verifier::hmac(b"a secret of 16+ bytes").unwrap();
        match WatcherHandle::spawn(c, verifier, CancellationToken::new()) {
            Err(e @ ConfigError::NonceFile(_)) => {
                let shown = e.to_string();
                assert!(shown.contains(&path.display().to_string()), "{shown}");
                assert!(shown.contains("line 1"), "{shown}");
            }
            other => panic!("expected a nonce-file error, got {:?}", other.err()),
        }
    }
}
