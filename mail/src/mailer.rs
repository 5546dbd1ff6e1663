//! The mailer actor: sends wake and cancel mails for the relay (which
//! wakes an agent that is not connected, "extension 1") and for the CLI.
//!
//! The owner sends a [`MailOrder`] through a [`Mailer`] handle. For each
//! order the mailer makes a [`Command`] with a fresh nonce that expires
//! `ttl` from now, signs it with the printer's [`Signer`] and submits it
//! through the [`SmtpSender`]. A failed submission is tried again after an
//! exponential backoff with jitter, with the same command, so a mail that
//! did arrive despite the error is refused by the agent as a replay rather
//! than acted on twice. Each step is reported on a bounded channel of
//! [`MailReport`]s.
//!
//! Every order runs in a task of its own, so one printer's unreachable
//! mail server or slow retries never hold up another order. On cancel no
//! new attempt starts; an attempt under way is let finish (it ends with
//! QUIT or at the sender's submission deadline), and the orders still
//! waiting to be taken are reported as given up.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument as _, debug, error, info, info_span, warn};

use crate::command::{Command, Kind, MAX_LIFETIME, Signer, random_nonce};
use crate::error::{ConfigError, MailerClosed};
use crate::smtp::SmtpSender;
use crate::watcher::backoff_delay;

/// How many orders may wait to be taken, and reports to be read.
const CHANNEL_CAPACITY: usize = 64;

/// Looks up the [`Signer`] of a printer by name; `None` when the printer
/// has no key (its orders then give up at once).
pub type SignerLookup = Arc<dyn Fn(&str) -> Option<Signer> + Send + Sync>;

/// One command mail to send: what to tell which printer, at which
/// address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailOrder {
    /// Wake (connect to the proxy) or cancel.
    pub kind: Kind,
    /// The printer (server site) name, e.g. `expp1%abc.com`; also the key
    /// for [`Mailer::spawn`]'s signer lookup.
    pub printer: String,
    /// The printer's mail address.
    pub to: String,
    /// The sender's address (envelope and `From`).
    pub from: String,
    /// The Infrastructure Printer URI the agent is to connect to.
    pub proxy_uri: String,
    /// The jobs waiting at the proxy; may be empty. Ids start at 1.
    pub jobs: Vec<u64>,
    /// How long the command stays valid from when the mailer takes the
    /// order: more than 0, at most [`MAX_LIFETIME`] (24 h). Keep it short
    /// (minutes): it is also how long a mail may still be acted on.
    pub ttl: Duration,
    /// The owner's id for what the order is for (the IPP front's wake-up,
    /// `WakeRequest::wake`); the mailer only carries it into the order's
    /// reports, so the owner can tell a late report about an earlier
    /// order from one about its current one. 0 when the owner needs none.
    pub wake: u64,
}

/// What became of an order, step by step. Every order ends with exactly
/// one [`MailReport::Sent`] or [`MailReport::GaveUp`] (unless the mailer
/// is cancelled first), after zero or more [`MailReport::Retrying`].
/// Each carries its whole order, [`MailOrder::wake`] included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailReport {
    /// The SMTP server accepted the mail.
    Sent {
        /// The order.
        order: MailOrder,
        /// Attempts it took, from 1.
        attempts: u32,
    },
    /// An attempt failed; another follows after `next_in`.
    Retrying {
        /// The order.
        order: MailOrder,
        /// The attempt that failed, from 1.
        attempt: u32,
        /// Why it failed.
        error: String,
        /// The delay before the next attempt.
        next_in: Duration,
    },
    /// The order is dropped: no signer for the printer, an order that
    /// cannot be written as a mail, a permanent SMTP refusal (5xx), the
    /// last of `max_attempts` failed, the command would expire before the
    /// next attempt, or the mailer shut down before taking the order.
    GaveUp {
        /// The order.
        order: MailOrder,
        /// Attempts made (0 if none was).
        attempts: u32,
        /// Why it was dropped.
        error: String,
    },
}

impl MailReport {
    /// The order the report is about.
    pub fn order(&self) -> &MailOrder {
        match self {
            Self::Sent { order, .. }
            | Self::Retrying { order, .. }
            | Self::GaveUp { order, .. } => order,
        }
    }
}

/// How failed submissions are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailerConfig {
    /// The delay after the first failure (jittered down to half of it).
    pub retry_initial: Duration,
    /// The longest delay between attempts; delays double up to it.
    pub retry_max: Duration,
    /// Attempts per order, the first included; 0 counts as 1.
    pub max_attempts: u32,
}

impl Default for MailerConfig {
    /// 10 s doubling to at most 5 min, 6 attempts (about 5 min in all).
    fn default() -> Self {
        Self {
            retry_initial: Duration::from_secs(10),
            retry_max: Duration::from_secs(300),
            max_attempts: 6,
        }
    }
}

impl MailerConfig {
    /// Checks the values that cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.retry_initial.is_zero() || self.retry_initial > self.retry_max {
            return Err(ConfigError::Invalid {
                field: "retry_initial",
                reason: "must be more than 0 and at most retry_max".into(),
            });
        }
        if self.max_attempts == 0 {
            return Err(ConfigError::Invalid {
                field: "max_attempts",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// The owner's handle: takes orders. Cheap to clone. The reports come
/// through the receiver returned by [`Mailer::spawn`].
#[derive(Debug, Clone)]
pub struct Mailer {
    orders: mpsc::Sender<MailOrder>,
    tasks: TaskTracker,
}

impl Mailer {
    /// Spawns the mailer on the current tokio runtime (so it must be
    /// called inside one; it panics otherwise, like `tokio::spawn`).
    /// `signer_for` looks up a printer's [`Signer`]; for `None` the order
    /// gives up at once with a reason naming the printer. The mailer stops
    /// when `cancel` fires or every handle is dropped. `config` is used as
    /// given; [`MailerConfig::validate`] is the caller's to call.
    pub fn spawn(
        sender: SmtpSender,
        signer_for: SignerLookup,
        config: MailerConfig,
        cancel: CancellationToken,
    ) -> (Mailer, mpsc::Receiver<MailReport>) {
        let (orders_tx, orders_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let (reports_tx, reports_rx) = mpsc::channel(CHANNEL_CAPACITY);
        let tasks = TaskTracker::new();
        let cancel = cancel.child_token();
        let actor = MailerActor {
            orders: orders_rx,
            tasks: tasks.clone(),
            shared: Arc::new(Shared {
                sender,
                signer_for,
                config,
                reports: reports_tx,
                cancel: cancel.clone(),
            }),
        };
        tasks.spawn(actor.run().instrument(info_span!("mailer")));
        // Closed now, so `stopped` resolves once the actor and every order
        // task it spawned (while it ran, so the count never hits 0 early)
        // have ended.
        tasks.close();
        (
            Mailer {
                orders: orders_tx,
                tasks,
            },
            reports_rx,
        )
    }

    /// Queues an order; waits only while 64 orders are already waiting to
    /// be taken. Fails once the mailer has stopped.
    pub async fn send(&self, order: MailOrder) -> Result<(), MailerClosed> {
        self.orders.send(order).await.map_err(|_| MailerClosed)
    }

    /// Resolves once the mailer and all its order tasks have ended (after
    /// a cancel: once the attempts under way have finished).
    pub async fn stopped(&self) {
        self.tasks.wait().await;
    }
}

/// What every order task needs.
struct Shared {
    sender: SmtpSender,
    signer_for: SignerLookup,
    config: MailerConfig,
    reports: mpsc::Sender<MailReport>,
    cancel: CancellationToken,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("sender", &self.sender)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Sends a report, unless shutting down while the owner does not read.
    async fn report(&self, report: MailReport) {
        tokio::select! {
            biased;
            sent = self.reports.send(report) => {
                if sent.is_err() {
                    debug!("Mail report dropped: nobody reads the reports.");
                }
            }
            () = self.cancel.cancelled() => {
                debug!("Mail report dropped: shutting down.");
            }
        }
    }

    async fn give_up(&self, order: MailOrder, attempts: u32, error: String) {
        error!(attempts, error = %error, "Command mail not sent; giving up.");
        self.report(MailReport::GaveUp {
            order,
            attempts,
            error,
        })
        .await;
    }
}

/// Takes orders and starts a task for each.
#[derive(Debug)]
struct MailerActor {
    orders: mpsc::Receiver<MailOrder>,
    tasks: TaskTracker,
    shared: Arc<Shared>,
}

impl MailerActor {
    async fn run(mut self) {
        debug!("Mailer started.");
        loop {
            tokio::select! {
                biased;
                () = self.shared.cancel.cancelled() => break,
                order = self.orders.recv() => match order {
                    Some(order) => {
                        let span = info_span!(
                            "mail_order",
                            kind = %order.kind,
                            printer = %order.printer,
                            to = %order.to,
                        );
                        self.tasks.spawn(deliver(self.shared.clone(), order).instrument(span));
                    }
                    None => break,
                },
            }
        }
        // Orders queued but not taken are answered, not silently lost.
        self.orders.close();
        while let Ok(order) = self.orders.try_recv() {
            let error = "the mailer shut down before sending it".to_owned();
            warn!(printer = %order.printer, kind = %order.kind, "Command mail not sent: shutting down.");
            if self
                .shared
                .reports
                .try_send(MailReport::GaveUp {
                    order,
                    attempts: 0,
                    error,
                })
                .is_err()
            {
                debug!("Mail report dropped: shutting down.");
            }
        }
        info!("Mailer stopping; attempts under way finish first.");
    }
}

/// Sends one order, retrying until it is sent, fails for good or the
/// mailer is cancelled.
async fn deliver(shared: Arc<Shared>, order: MailOrder) {
    let Some(signer) = (shared.signer_for)(&order.printer) else {
        let error = format!("no signing key for printer `{}`", order.printer);
        shared.give_up(order, 0, error).await;
        return;
    };
    if order.ttl.is_zero() || order.ttl > MAX_LIFETIME {
        let error = format!(
            "ttl {} must be more than 0 and at most 24 h",
            humantime::format_duration(order.ttl)
        );
        shared.give_up(order, 0, error).await;
        return;
    }
    let command = Command::new(
        order.kind,
        order.proxy_uri.clone(),
        order.printer.clone(),
        order.jobs.clone(),
        SystemTime::now() + order.ttl,
        random_nonce(),
    );
    let config = shared.config;
    let mut attempt: u32 = 0;
    loop {
        if shared.cancel.is_cancelled() {
            info!(attempts = attempt, "Command mail not sent: shutting down.");
            return;
        }
        attempt = attempt.saturating_add(1);
        let sent = shared
            .sender
            .send_command(&command, &signer, &order.from, &order.to, SystemTime::now())
            .await;
        let failure = match sent {
            Ok(()) => {
                debug!(attempts = attempt, "Mail order done.");
                shared
                    .report(MailReport::Sent {
                        order,
                        attempts: attempt,
                    })
                    .await;
                return;
            }
            Err(e) => e,
        };
        let error = failure.to_string();
        if failure.is_permanent() || attempt >= config.max_attempts {
            shared.give_up(order, attempt, error).await;
            return;
        }
        let next_in = backoff_delay(
            attempt - 1,
            config.retry_initial,
            config.retry_max,
            rand::random::<f64>(),
        );
        if SystemTime::now() + next_in >= command.expires {
            let error = format!("{error}; the command would expire before the next attempt");
            shared.give_up(order, attempt, error).await;
            return;
        }
        warn!(attempt, error = %error, ?next_in, "Command mail not sent; retrying.");
        shared
            .report(MailReport::Retrying {
                order: order.clone(),
                attempt,
                error,
                next_in,
            })
            .await;
        tokio::select! {
            () = shared.cancel.cancelled() => {
                info!(attempts = attempt, "Command mail not sent: shutting down.");
                return;
            }
            () = tokio::time::sleep(next_in) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};

    use socket2::{Domain, Socket, Type};
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
    use tokio::net::TcpListener;

    use super::*;
    use crate::command::{NonceCache, parse_and_verify};
    use crate::smtp::SmtpConfig;
    use crate::tls::Tls;

    const PRINTER: &str = "expp1%abc.com";
    const SECRET: &[u8] = b"expp1 shared secret, test only!";

    fn order(to: &str, jobs: Vec<u64>) -> MailOrder {
        MailOrder {
            kind: Kind::Wake,
            printer: PRINTER.into(),
            to: to.into(),
            from: "mailer@relay.faxgate.test".into(),
            proxy_uri: "ipps://relay.faxgate.test/ipp/print/expp1%abc.com".into(),
            jobs,
            ttl: Duration::from_secs(600),
            wake: 7,
        }
    }

    fn sender(port: u16) -> SmtpSender {
        let mut c = SmtpConfig::new("127.0.0.1", port);
        c.tls = Tls::None;
        c.timeout = Duration::from_secs(5);
        SmtpSender::new(&c).unwrap()
    }

    fn signers() -> SignerLookup {
        Arc::new(|printer: &str| (printer == PRINTER).then(|| Signer::hmac(SECRET).unwrap()))
    }

    fn quick(max_attempts: u32) -> MailerConfig {
        MailerConfig {
            retry_initial: Duration::from_millis(20),
            retry_max: Duration::from_millis(80),
            max_attempts,
        }
    }

    /// A loopback port with nothing listening: the socket is bound but
    /// never listens, so connects are refused, and while the caller keeps
    /// it no other test can take the port.
    fn closed_port() -> (Socket, u16) {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
        s.bind(&addr.into()).unwrap();
        let port = s.local_addr().unwrap().as_socket().unwrap().port();
        (s, port)
    }

    async fn next(rx: &mut mpsc::Receiver<MailReport>) -> MailReport {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("timed out waiting for a report")
            .expect("the mailer stopped")
    }

    /// A minimal SMTP server: `451` for any recipient starting `down@`,
    /// otherwise it takes the mail and passes (recipient, message) on.
    async fn fake_smtp() -> (u16, mpsc::UnboundedReceiver<(String, Vec<u8>)>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let (r, mut w) = socket.into_split();
                    let mut r = BufReader::new(r);
                    w.write_all(b"220 fake ESMTP\r\n").await.unwrap();
                    let mut rcpt = String::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let verb = line.get(..4).unwrap_or("").to_ascii_uppercase();
                        let reply: &[u8] = match verb.as_str() {
                            "EHLO" | "HELO" => b"250 fake\r\n",
                            "RCPT" if line.contains("<down@") => b"451 4.3.0 try again later\r\n",
                            "RCPT" => {
                                rcpt = line.trim_end().to_owned();
                                b"250 ok\r\n"
                            }
                            "DATA" => {
                                w.write_all(b"354 go on\r\n").await.unwrap();
                                let mut message = Vec::new();
                                loop {
                                    let mut l = String::new();
                                    r.read_line(&mut l).await.unwrap();
                                    if l == ".\r\n" {
                                        break;
                                    }
                                    message.extend_from_slice(l.as_bytes());
                                }
                                let _ = tx.send((rcpt.clone(), message));
                                b"250 queued\r\n"
                            }
                            "QUIT" => {
                                let _ = w.write_all(b"221 bye\r\n").await;
                                return;
                            }
                            _ => b"250 ok\r\n",
                        };
                        w.write_all(reply).await.unwrap();
                    }
                });
            }
        });
        (port, rx)
    }

    #[tokio::test]
    async fn a_server_that_accepts_and_stalls_is_retried_then_given_up() {
        // The server takes the connection and never sends its greeting.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = held.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                keep.lock().unwrap().push(socket);
            }
        });
        let mut c = SmtpConfig::new("127.0.0.1", port);
        c.tls = Tls::None;
        c.timeout = Duration::from_millis(100);
        let cancel = CancellationToken::new();
        let (mailer, mut reports) = Mailer::spawn(
            SmtpSender::new(&c).unwrap(),
            signers(),
            quick(2),
            cancel.clone(),
        );
        let o = order("expp1@abc.test", vec![1]);
        mailer.send(o.clone()).await.unwrap();
        match next(&mut reports).await {
            MailReport::Retrying { attempt, error, .. } => {
                assert_eq!(attempt, 1);
                assert!(
                    error.contains(&format!("127.0.0.1:{port}"))
                        && error.contains("did not finish the submission within 400ms"),
                    "{error}"
                );
            }
            other => panic!("expected Retrying, got {other:?}"),
        }
        match next(&mut reports).await {
            MailReport::GaveUp { attempts, .. } => assert_eq!(attempts, 2),
            other => panic!("expected GaveUp, got {other:?}"),
        }
        assert_eq!(held.lock().unwrap().len(), 2, "each attempt connected");
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), mailer.stopped())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_when_nothing_listens() {
        let cancel = CancellationToken::new();
        let (_reserved, port) = closed_port();
        let (mailer, mut reports) =
            Mailer::spawn(sender(port), signers(), quick(3), cancel.clone());
        let o = order("expp1@abc.test", vec![1]);
        mailer.send(o.clone()).await.unwrap();
        for n in 1..=2 {
            match next(&mut reports).await {
                MailReport::Retrying {
                    order,
                    attempt,
                    error,
                    next_in,
                } => {
                    assert_eq!((order, attempt), (o.clone(), n));
                    assert!(error.contains("SMTP"), "{error}");
                    let cap = Duration::from_millis(20 * (1 << (n - 1)));
                    assert!(next_in >= cap / 2 && next_in <= cap, "{next_in:?}");
                }
                other => panic!("expected Retrying {n}, got {other:?}"),
            }
        }
        match next(&mut reports).await {
            MailReport::GaveUp {
                order, attempts, ..
            } => assert_eq!((order, attempts), (o, 3)),
            other => panic!("expected GaveUp, got {other:?}"),
        }
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), mailer.stopped())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn bad_orders_give_up_at_once() {
        let (port, _mails) = fake_smtp().await;
        let (mailer, mut reports) =
            Mailer::spawn(sender(port), signers(), quick(5), CancellationToken::new());
        let mut unknown = order("x@abc.test", vec![]);
        unknown.printer = "nobody%abc.com".into();
        let mut forever = order("x@abc.test", vec![]);
        forever.ttl = MAX_LIFETIME + Duration::from_secs(1);
        let bad_job = order("x@abc.test", vec![0]);
        let bad_address = order("not an address", vec![]);
        for (o, attempts, says) in [
            (unknown, 0, "printer `nobody%abc.com`"),
            (forever, 0, "ttl"),
            (bad_job, 1, "Jobs"),
            (bad_address, 1, "`To`"),
        ] {
            mailer.send(o.clone()).await.unwrap();
            match next(&mut reports).await {
                MailReport::GaveUp {
                    order,
                    attempts: a,
                    error,
                } => {
                    assert_eq!((order, a), (o, attempts));
                    assert!(error.contains(says), "{error}");
                }
                other => panic!("expected GaveUp, got {other:?}"),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_order_does_not_hold_up_another() {
        let (port, mut mails) = fake_smtp().await;
        let config = MailerConfig {
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(1),
            max_attempts: 4,
        };
        let (mailer, mut reports) =
            Mailer::spawn(sender(port), signers(), config, CancellationToken::new());
        let down = order("down@abc.test", vec![1]);
        let up = order("up@abc.test", vec![2, 3]);
        mailer.send(down.clone()).await.unwrap();
        match next(&mut reports).await {
            MailReport::Retrying { order, attempt, .. } => {
                assert_eq!((order, attempt), (down.clone(), 1))
            }
            other => panic!("expected Retrying, got {other:?}"),
        }
        // `down` now waits 0.5 to 1 s between attempts; `up` goes at once.
        // On a loaded machine down's next Retrying may still come first, so
        // the reports are taken in any order; up's Sent must come before
        // down gives up (at least 1.5 s away), which a mailer that held up
        // the queue behind a failing order would not do.
        mailer.send(up.clone()).await.unwrap();
        let mut attempts = vec![1];
        let mut up_sent = false;
        loop {
            match next(&mut reports).await {
                MailReport::Sent { order, attempts: a } => {
                    assert!(!up_sent, "a second Sent: {order:?}");
                    assert_eq!((order, a), (up.clone(), 1));
                    up_sent = true;
                }
                MailReport::Retrying { order, attempt, .. } => {
                    assert_eq!(order, down);
                    attempts.push(attempt);
                }
                MailReport::GaveUp {
                    order, attempts: a, ..
                } => {
                    assert!(up_sent, "down gave up before up was sent: up was held up");
                    assert_eq!((order, a), (down, 4));
                    break;
                }
            }
        }
        assert_eq!(attempts, [1, 2, 3]);
        let (rcpt, message) = mails.recv().await.unwrap();
        assert!(rcpt.contains("<up@abc.test>"), "{rcpt}");
        let verifier = Signer::hmac(SECRET).unwrap().verifier();
        let cmd = parse_and_verify(
            &message,
            &verifier,
            PRINTER,
            SystemTime::now(),
            &mut NonceCache::default(),
        )
        .unwrap();
        assert_eq!((cmd.kind, cmd.job_ids), (Kind::Wake, vec![2, 3]));
    }

    #[tokio::test]
    async fn cancel_stops_retrying_and_refuses_orders() {
        let cancel = CancellationToken::new();
        let config = MailerConfig {
            retry_initial: Duration::from_secs(60),
            retry_max: Duration::from_secs(60),
            max_attempts: 10,
        };
        let (_reserved, port) = closed_port();
        let (mailer, mut reports) = Mailer::spawn(sender(port), signers(), config, cancel.clone());
        mailer.send(order("x@abc.test", vec![])).await.unwrap();
        assert!(matches!(
            next(&mut reports).await,
            MailReport::Retrying { attempt: 1, .. }
        ));
        cancel.cancel();
        tokio::time::timeout(Duration::from_secs(5), mailer.stopped())
            .await
            .expect("the mailer did not stop within 5 s");
        assert_eq!(
            mailer.send(order("x@abc.test", vec![])).await,
            Err(MailerClosed)
        );
        assert!(reports.recv().await.is_none());
    }

    #[test]
    fn config_validation() {
        assert!(MailerConfig::default().validate().is_ok());
        let mut c = quick(0);
        assert!(c.validate().is_err());
        c.max_attempts = 1;
        assert!(c.validate().is_ok());
        c.retry_initial = Duration::ZERO;
        assert!(c.validate().is_err());
        c.retry_initial = Duration::from_secs(1);
        c.retry_max = Duration::from_millis(1);
        assert!(c.validate().is_err());
    }
}
