//! The hot folder: a file dropped into a folder becomes a document.
//!
//! An actor ([`HotFolderHandle`] plus a private `HotFolderActor`) polls the
//! folder. A file is picked up only once it is *settled*: its size and
//! modification time have not changed for the whole settle interval (the
//! folder may be a network share where no change notification exists, and
//! a slow writer pauses between chunks). Names that writers use while
//! writing are never picked up: dotfiles, `*.part`, `*.tmp`, `*.partial`,
//! `*.crdownload`, `*.swp` and `*~`; a writer that renames into place
//! when done is the safest, and the settle interval covers the rest.
//!
//! A settled file is first *claimed*: it gets a fresh random key and is
//! renamed to `processing/KEY-NAME` (a subfolder of the hot folder, so
//! the rename is atomic; both folders are fsynced). It is then read by
//! the [`FileLoader`] and sent on the output channel as a
//! [`HotFolderItem`]: the document, its key and a [`HotFolderAck`]. The
//! consumer stores the document durably under the key and then calls
//! [`HotFolderAck::confirm`]; only then is the file moved to `done/NAME`.
//! A crash at any point leaves the file in the hot folder (not yet
//! claimed), in `processing/` (offered again at the next start *with the
//! same key*, so a consumer that had already stored it recognises the key
//! and confirms without storing it twice), or in `done/` with the document
//! stored: never lost, never stored twice. A consumer that drops the item
//! without confirming leaves the file in `processing/`: it is offered
//! again after [`HotFolderConfig::retry_delay`] (doubled after each
//! attempt), and after [`HotFolderConfig::max_offers`] unconfirmed offers
//! it goes to `failed/` with a reason. A consumer that cannot take the
//! document at all (it is not a valid fax document, say) calls
//! [`HotFolderAck::refuse`] with the reason, and the file goes to
//! `failed/` at once. A file that cannot be read is moved to `failed/`
//! with `NAME.reason.txt` next to it saying why, unless the failure may
//! pass by itself (the read ran out of time, or a temporary folder could
//! not be made: [`ScanError::is_transient`]); such a file stays in
//! `processing/` and is read again like a document not confirmed, up to
//! [`HotFolderConfig::max_offers`] attempts in all. Only regular files
//! are read: a symbolic link, pipe or device is moved to `failed/` as it
//! is (a link is renamed, never read or copied through) with a reason.
//! Names already taken in `done/` or `failed/` get a `-N` suffix, so
//! nothing is overwritten.
//!
//! One document is in flight at a time: the actor waits for the
//! confirmation before it reads the next file, so a slow consumer leaves
//! files in the folder. Shutdown is through the [`CancellationToken`]: the
//! actor stops at its next await, which is always a safe point (a file is
//! moved to `done/` only after its document was confirmed as stored, so
//! at worst a claimed file is offered again, with its key, at the next
//! start). A document already handed over
//! when the token is cancelled gets a short grace for its confirmation.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::hash::Hash;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::document::{Document, Origin};
use crate::error::ScanError;
use crate::files::{FileLoader, Links};

/// How the hot folder works.
#[derive(Clone, Debug, PartialEq)]
pub struct HotFolderConfig {
    /// The folder to watch. It must exist.
    pub dir: PathBuf,
    /// Where finished files go (default `DIR/done`; created if missing).
    pub done_dir: Option<PathBuf>,
    /// Where unreadable files go (default `DIR/failed`; created if missing).
    pub failed_dir: Option<PathBuf>,
    /// How long size and modification time must stay unchanged before a
    /// file counts as completely written.
    pub settle: Duration,
    /// How often the folder is listed.
    pub poll_interval: Duration,
    /// How files are read and converted.
    pub loader: FileLoader,
    /// How many times a document is offered without being confirmed as
    /// stored, or its file read without success for a reason that may
    /// pass ([`ScanError::is_transient`]), before the file goes to
    /// `failed/` (at least 1).
    pub max_offers: u32,
    /// The wait before a document that was not confirmed is offered
    /// again; doubled after each further attempt, at most
    /// [`MAX_RETRY_DELAY`]. The file waits in `processing/` meanwhile.
    pub retry_delay: Duration,
}

/// The longest wait between two offers of the same file.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(600);

/// How long a stopping hot folder still waits for the confirmation of a
/// document already handed over (a consumer storing it right now).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The subfolder of the hot folder where a claimed file waits, named
/// `KEY-NAME`, while its document is offered.
pub const PROCESSING_DIR: &str = "processing";

/// The length of a claim key: 16 lowercase hex digits (64 random bits).
pub const KEY_LEN: usize = 16;

/// The longest name a file in `processing/` may have (`NAME_MAX`).
const MAX_NAME_BYTES: usize = 255;

impl HotFolderConfig {
    /// Defaults for `dir`: settle 2 s, poll every 500 ms, a document not
    /// confirmed is offered again after 10 s, 20 s, 40 s, 80 s, and goes
    /// to `failed/` after 5 unconfirmed offers.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        HotFolderConfig {
            dir: dir.into(),
            done_dir: None,
            failed_dir: None,
            settle: Duration::from_secs(2),
            poll_interval: Duration::from_millis(500),
            loader: FileLoader::default(),
            max_offers: 5,
            retry_delay: Duration::from_secs(10),
        }
    }

    /// The `done/` folder in effect.
    pub fn done_dir(&self) -> PathBuf {
        self.done_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("done"))
    }

    /// The `failed/` folder in effect.
    pub fn failed_dir(&self) -> PathBuf {
        self.failed_dir
            .clone()
            .unwrap_or_else(|| self.dir.join("failed"))
    }
}

/// Counters for the panel and for tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HotFolderStatus {
    /// Files seen and waiting to settle.
    pub waiting: usize,
    /// Files whose document was offered but not confirmed as stored,
    /// waiting to be offered again.
    pub retrying: usize,
    /// Files whose document was confirmed as stored, moved to `done/`.
    pub done: u64,
    /// Files moved to `failed/` (unreadable, or never confirmed).
    pub failed: u64,
}

/// A document from the hot folder, and the confirmation its file waits
/// for. The consumer stores `document` durably under `key`, then calls
/// `ack.confirm()`; dropping the item (or the ack) without confirming
/// leaves the file in `processing/` to be offered again.
#[derive(Debug)]
pub struct HotFolderItem {
    /// The document read from the file.
    pub document: Document,
    /// This drop of the file: [`KEY_LEN`] lowercase hex digits, the same
    /// every time the file is offered (after a restart too) until it
    /// leaves `processing/`. A consumer offered a key it has already
    /// stored confirms without storing the document again.
    pub key: String,
    /// Confirms that `document` is durably stored.
    pub ack: HotFolderAck,
}

/// What the consumer said about a document.
#[derive(Debug)]
enum Verdict {
    Stored,
    Refused(String),
}

/// The confirmation of a [`HotFolderItem`]: call [`HotFolderAck::confirm`]
/// once the document is durably stored (never before: the file is moved
/// to `done/` on it). Dropping it unconfirmed means "not stored yet".
#[derive(Debug)]
#[must_use = "a hot folder document that is not confirmed is offered again"]
pub struct HotFolderAck(oneshot::Sender<Verdict>);

impl HotFolderAck {
    /// Tells the hot folder that the document is durably stored, so that
    /// its file may be moved to `done/`. Returns `false` when the hot
    /// folder no longer waits for it (it stopped): the file then stays in
    /// `processing/` and is offered again, with the same key, at the next
    /// start.
    pub fn confirm(self) -> bool {
        self.0.send(Verdict::Stored).is_ok()
    }

    /// Tells the hot folder that the document can never be taken (it is
    /// not a valid document for this consumer): its file goes to
    /// `failed/` at once, with `reason` in its reason file. Returns
    /// `false` when the hot folder no longer waits for it.
    pub fn refuse(self, reason: impl Into<String>) -> bool {
        self.0.send(Verdict::Refused(reason.into())).is_ok()
    }
}

/// Messages to the hot folder actor.
#[derive(Debug)]
enum HotFolderMsg {
    Status {
        reply: oneshot::Sender<HotFolderStatus>,
    },
    Rescan {
        reply: oneshot::Sender<HotFolderStatus>,
    },
}

/// The handle of a running hot folder. Cloneable; the actor runs until
/// its cancellation token is cancelled or the output channel closes.
#[derive(Clone, Debug)]
pub struct HotFolderHandle {
    tx: mpsc::Sender<HotFolderMsg>,
}

impl HotFolderHandle {
    /// Checks the folders, creates `done/` and `failed/`, and spawns the
    /// actor on `tracker`. Documents go to `out`, each to be confirmed
    /// through its [`HotFolderAck`] once stored.
    pub async fn spawn(
        config: HotFolderConfig,
        out: mpsc::Sender<HotFolderItem>,
        cancel: CancellationToken,
        tracker: &TaskTracker,
    ) -> Result<Self, ScanError> {
        if config.settle.is_zero() || config.poll_interval.is_zero() {
            return Err(ScanError::InvalidOptions {
                reason: "hot folder settle and poll intervals must be above zero".into(),
            });
        }
        if config.max_offers == 0 {
            return Err(ScanError::InvalidOptions {
                reason: "hot folder max_offers must be at least 1".into(),
            });
        }
        let meta = tokio::fs::metadata(&config.dir)
            .await
            .map_err(|e| ScanError::io(&config.dir, "opening the hot folder", e))?;
        if !meta.is_dir() {
            return Err(ScanError::InvalidOptions {
                reason: format!("hot folder {} is not a folder", config.dir.display()),
            });
        }
        let (done, failed) = (config.done_dir(), config.failed_dir());
        let processing = config.dir.join(PROCESSING_DIR);
        for d in [&done, &failed, &processing] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(|e| ScanError::io(d, "creating", e))?;
        }
        let (tx, rx) = mpsc::channel(8);
        let span = info_span!("hotfolder", dir = %config.dir.display());
        let actor = HotFolderActor {
            config,
            done,
            failed,
            processing,
            rx,
            out,
            cancel,
            settler: Settler::default(),
            stuck: HashSet::new(),
            claims: HashMap::new(),
            status: HotFolderStatus::default(),
        };
        tracker.spawn(actor.run().instrument(span));
        Ok(HotFolderHandle { tx })
    }

    /// The counters.
    pub async fn status(&self) -> Result<HotFolderStatus, ScanError> {
        self.ask(|reply| HotFolderMsg::Status { reply }).await
    }

    /// Lists the folder now instead of at the next tick, and returns the
    /// counters after that pass.
    pub async fn rescan(&self) -> Result<HotFolderStatus, ScanError> {
        self.ask(|reply| HotFolderMsg::Rescan { reply }).await
    }

    async fn ask(
        &self,
        msg: impl FnOnce(oneshot::Sender<HotFolderStatus>) -> HotFolderMsg,
    ) -> Result<HotFolderStatus, ScanError> {
        let gone = || ScanError::ActorStopped {
            actor: "hot folder",
        };
        let (reply, rx) = oneshot::channel();
        self.tx.send(msg(reply)).await.map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }
}

/// The actor: owns the folder state and the receiver.
struct HotFolderActor {
    config: HotFolderConfig,
    done: PathBuf,
    failed: PathBuf,
    processing: PathBuf,
    rx: mpsc::Receiver<HotFolderMsg>,
    out: mpsc::Sender<HotFolderItem>,
    cancel: CancellationToken,
    settler: Settler<OsString>,
    /// Files that could not be claimed, or moved neither to done/ nor
    /// failed/ (names in the hot folder or in processing/): skipped while
    /// they stay, so that they are not read again and again.
    stuck: HashSet<OsString>,
    /// The claimed files in processing/, by their name there.
    claims: HashMap<OsString, Claim>,
    status: HotFolderStatus,
}

/// A claimed file: `processing/KEY-NAME`.
#[derive(Clone, Debug)]
struct Claim {
    key: String,
    /// The name it was dropped with (and goes to done/ or failed/ with).
    name: OsString,
    /// Offers not confirmed so far.
    offers: u32,
    /// When it may be offered (again).
    retry_at: Instant,
}

impl Claim {
    /// The claim a name in processing/ stands for: `KEY-NAME`.
    fn parse(claimed: &OsStr, now: Instant) -> Option<Claim> {
        use std::os::unix::ffi::OsStrExt as _;
        let b = claimed.as_bytes();
        let key = b.get(..KEY_LEN)?;
        if !key
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
            || b.get(KEY_LEN) != Some(&b'-')
            || b.len() == KEY_LEN + 1
        {
            return None;
        }
        Some(Claim {
            key: String::from_utf8_lossy(key).into_owned(),
            name: OsStr::from_bytes(&b[KEY_LEN + 1..]).to_os_string(),
            offers: 0,
            retry_at: now,
        })
    }
}

/// A fresh claim key: [`KEY_LEN`] lowercase hex digits.
fn new_key() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// The eligible names in the hot folder, from [`HotFolderActor::list`].
#[derive(Debug, Default)]
struct Listing {
    /// Regular files: (name, size, mtime).
    files: Vec<(OsString, u64, Option<SystemTime>)>,
    /// Anything else but folders: (name, what it is).
    others: Vec<(OsString, &'static str)>,
}

/// What a pass over the folder asks of the loop.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

impl HotFolderActor {
    async fn run(mut self) {
        info!(
            settle_ms = self.config.settle.as_millis() as u64,
            "Hot folder started."
        );
        let mut tick = tokio::time::interval(self.config.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut handles_open = true;
        loop {
            let flow = tokio::select! {
                _ = self.cancel.cancelled() => Flow::Stop,
                msg = self.rx.recv(), if handles_open => match msg {
                    None => {
                        handles_open = false;
                        Flow::Continue
                    }
                    Some(HotFolderMsg::Status { reply }) => {
                        let _ = reply.send(self.status);
                        Flow::Continue
                    }
                    Some(HotFolderMsg::Rescan { reply }) => {
                        let flow = self.poll().await;
                        let _ = reply.send(self.status);
                        flow
                    }
                },
                _ = tick.tick() => self.poll().await,
            };
            if flow == Flow::Stop {
                break;
            }
        }
        info!(
            done = self.status.done,
            failed = self.status.failed,
            "Hot folder stopped."
        );
    }

    /// One pass: list, update the settle state, process settled files.
    async fn poll(&mut self) -> Flow {
        let listing = match self.list().await {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "Cannot list the hot folder; trying again at the next tick.");
                return Flow::Continue;
            }
        };
        let claimed = match self.list_claimed().await {
            Ok(c) => c,
            Err(e) => {
                warn!(error = %e, "Cannot list the hot folder's processing/ folder; trying again at the next tick.");
                return Flow::Continue;
            }
        };
        self.stuck.retain(|n| {
            listing.files.iter().any(|(l, ..)| l == n)
                || listing.others.iter().any(|(l, _)| l == n)
                || claimed.iter().any(|(c, _)| c == n)
        });
        self.claims
            .retain(|n, _| claimed.iter().any(|(c, _)| c == n));
        for (n, claim) in claimed {
            if let std::collections::hash_map::Entry::Vacant(e) = self.claims.entry(n) {
                // Claimed before a restart: offered again with its key.
                info!(file = %claim.name.to_string_lossy(), key = %claim.key, "A document claimed before a restart is offered again.");
                e.insert(claim);
            }
        }
        let now = Instant::now();
        // Claimed files due for an offer first, in name order.
        let mut due: Vec<OsString> = self
            .claims
            .iter()
            .filter(|(n, c)| c.retry_at <= now && !self.stuck.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        due.sort();
        self.status.retrying = self.claims.len();
        for claimed in due {
            if self.offer(&claimed).await == Flow::Stop {
                return Flow::Stop;
            }
        }
        self.refuse_others(listing.others).await;
        let listing: Vec<_> = listing
            .files
            .into_iter()
            .filter(|(n, ..)| !self.stuck.contains(n))
            .collect();
        let ready = self.settler.observe(&listing, now, self.config.settle);
        self.status.waiting = self.settler.len();
        for name in ready {
            let Some(claimed) = self.claim(&name).await else {
                continue;
            };
            if self.offer(&claimed).await == Flow::Stop {
                return Flow::Stop;
            }
        }
        self.status.retrying = self.claims.len();
        Flow::Continue
    }

    /// The claimed files in processing/: (name there, claim). Names that
    /// are no claim are left alone. A claim that is not a regular file (a
    /// link claimed by an older version, or put there) is listed too: it
    /// is refused when read, and so goes to failed/ rather than staying.
    async fn list_claimed(&self) -> std::io::Result<Vec<(OsString, Claim)>> {
        let mut rd = tokio::fs::read_dir(&self.processing).await?;
        let now = Instant::now();
        let mut out = Vec::new();
        while let Some(entry) = rd.next_entry().await? {
            let name = entry.file_name();
            let Some(claim) = Claim::parse(&name, now) else {
                continue;
            };
            if entry.file_type().await.is_ok_and(|t| !t.is_dir()) {
                out.push((name, claim));
            }
        }
        Ok(out)
    }

    /// The eligible names in the folder: regular files as (name, size,
    /// mtime), and what is neither a regular file with one name nor a
    /// folder (a symbolic or hard link, a pipe, a device) with what it is. Links are not
    /// followed; folders (`done/`, `processing/`, ...) are left alone.
    async fn list(&self) -> std::io::Result<Listing> {
        use std::os::unix::fs::MetadataExt as _;
        let mut rd = tokio::fs::read_dir(&self.config.dir).await?;
        let mut out = Listing::default();
        while let Some(entry) = rd.next_entry().await? {
            let name = entry.file_name();
            if !eligible(&name) {
                continue;
            }
            // A file removed meanwhile is just skipped.
            let Ok(meta) = tokio::fs::symlink_metadata(entry.path()).await else {
                continue;
            };
            let kind = meta.file_type();
            if kind.is_file() && meta.nlink() > 1 {
                out.others
                    .push((name, "a hard link (the file has more than one name)"));
            } else if kind.is_file() {
                out.files.push((name, meta.len(), meta.modified().ok()));
            } else if kind.is_symlink() {
                out.others.push((name, "a symbolic link"));
            } else if !kind.is_dir() {
                out.others
                    .push((name, "not a regular file (a pipe, socket or device)"));
            }
        }
        Ok(out)
    }

    /// Moves what is not a regular file to `failed/` as it is (a link is
    /// moved, never read or copied through), with a reason.
    async fn refuse_others(&mut self, others: Vec<(OsString, &'static str)>) {
        for (name, what) in others {
            if self.stuck.contains(&name) {
                continue;
            }
            let path = self.config.dir.join(&name);
            let reason = format!(
                "{}: {what}; a hot folder takes only regular files and never reads what a link points to: put a copy of the file into the folder",
                name.to_string_lossy()
            );
            self.fail(&name, &path, &name, &reason).await;
        }
    }

    /// Claims a settled file: a fresh key, renamed to
    /// `processing/KEY-NAME`, both folders synced. Returns its name there,
    /// or `None` when it could not be claimed (it then went to `failed/`,
    /// or stays in place and is skipped).
    async fn claim(&mut self, name: &OsStr) -> Option<OsString> {
        let path = self.config.dir.join(name);
        let file = name.to_string_lossy().into_owned();
        let key = new_key();
        let mut claimed = OsString::from(&key);
        claimed.push("-");
        claimed.push(name);
        if claimed.len() > MAX_NAME_BYTES {
            let reason = format!(
                "{file}: the file name is {} bytes long; a hot folder file name may have at most {} bytes",
                name.len(),
                MAX_NAME_BYTES - KEY_LEN - 1
            );
            self.fail(name, &path, name, &reason).await;
            return None;
        }
        let to = self.processing.join(&claimed);
        let (from, dest, dirs) = (
            path.clone(),
            to.clone(),
            [self.config.dir.clone(), self.processing.clone()],
        );
        let renamed = tokio::task::spawn_blocking(move || {
            std::fs::rename(&from, &dest).map_err(|e| ScanError::io(&from, "claiming", e))?;
            dirs.iter().try_for_each(|d| sync_dir(d))
        })
        .await
        .unwrap_or_else(|e| {
            Err(ScanError::io(
                &path,
                "claiming",
                std::io::Error::other(format!("the claim task failed: {e}")),
            ))
        });
        if let Err(e) = renamed {
            if std::fs::symlink_metadata(&to).is_ok() {
                // Renamed, but a folder could not be synced: a crash could
                // undo the claim, which then happens again. Go on.
                warn!(%file, error = %e, "Claimed, but a folder cannot be synced.");
            } else {
                self.stuck.insert(name.to_os_string());
                error!(%file, error = %e, "Cannot claim the file (move it to processing/); it is left in place and skipped.");
                return None;
            }
        }
        debug!(%file, %key, "Hot folder file settled and claimed.");
        self.claims.insert(
            claimed.clone(),
            Claim {
                key,
                name: name.to_os_string(),
                offers: 0,
                retry_at: Instant::now(),
            },
        );
        Some(claimed)
    }

    /// Reads one claimed file, hands the document over, waits for its
    /// confirmation and moves the file.
    async fn offer(&mut self, claimed: &OsStr) -> Flow {
        let Some(claim) = self.claims.get(claimed).cloned() else {
            return Flow::Continue;
        };
        let path = self.processing.join(claimed);
        let file = claim.name.to_string_lossy().into_owned();
        debug!(%file, key = %claim.key, "Reading a claimed hot folder file.");
        let origin = Origin::HotFolder(self.config.dir.join(&claim.name));
        let result = tokio::select! {
            _ = self.cancel.cancelled() => return Flow::Stop,
            r = self.config.loader.load_as(&path, file.clone(), origin, Links::Refuse) => r,
        };
        let doc = match result {
            Ok(doc) => doc,
            Err(e) if e.is_transient() => {
                self.not_taken(claimed, &path, &file, Some(e)).await;
                return Flow::Continue;
            }
            Err(reason) => {
                self.claims.remove(claimed);
                self.fail(claimed, &path, &claim.name, &reason.to_string())
                    .await;
                return Flow::Continue;
            }
        };
        let pages = doc.pages.len();
        let dropped = doc.dropped_blank.len();
        let (ack, mut stored) = oneshot::channel();
        let item = HotFolderItem {
            document: doc,
            key: claim.key.clone(),
            ack: HotFolderAck(ack),
        };
        tokio::select! {
            _ = self.cancel.cancelled() => return Flow::Stop,
            sent = self.out.send(item) => if sent.is_err() {
                warn!(%file, "The document consumer has gone; the hot folder stops and leaves the file in processing/.");
                return Flow::Stop;
            },
        }
        // Some(verdict), or None when cancelled first.
        let answer = tokio::select! {
            r = &mut stored => Some(r.ok()),
            _ = self.cancel.cancelled() => None,
        };
        let (verdict, flow) = match answer {
            Some(verdict) => (verdict, Flow::Continue),
            None => {
                let late = tokio::time::timeout(SHUTDOWN_GRACE, stored).await;
                (late.ok().and_then(Result::ok), Flow::Stop)
            }
        };
        match verdict {
            Some(Verdict::Stored) => {}
            Some(Verdict::Refused(reason)) => {
                self.claims.remove(claimed);
                let reason = format!("{file}: refused by the consumer: {reason}");
                self.fail(claimed, &path, &claim.name, &reason).await;
                return flow;
            }
            None if flow == Flow::Stop => {
                info!(%file, "Stopping before the document was confirmed as stored; the file stays in processing/ and is offered again at the next start.");
                return flow;
            }
            None => {
                self.not_taken(claimed, &path, &file, None).await;
                return flow;
            }
        }
        self.claims.remove(claimed);
        match move_unique(&path, &self.done, &claim.name).await {
            Ok(dest) => {
                self.status.done += 1;
                info!(%file, pages, dropped_blank = dropped, dest = %dest.display(), "Hot folder document stored; file moved to done/.");
            }
            Err(e) => {
                self.stuck.insert(claimed.to_os_string());
                error!(%file, error = %e, "Document stored but the file cannot be moved to done/; it is left in processing/ and skipped.");
            }
        }
        flow
    }

    /// A document not taken this time: dropped without confirmation
    /// (`error` is `None`), or not read for a reason that may pass (see
    /// [`ScanError::is_transient`]). Offered again later, or after
    /// `max_offers` attempts moved to `failed/`.
    async fn not_taken(
        &mut self,
        claimed: &OsStr,
        path: &Path,
        file: &str,
        error: Option<ScanError>,
    ) {
        let now = Instant::now();
        let Some(claim) = self.claims.get_mut(claimed) else {
            return;
        };
        claim.offers += 1;
        let count = claim.offers;
        if count < self.config.max_offers {
            let delay = retry_delay(self.config.retry_delay, count);
            claim.retry_at = now + delay;
            let (max_offers, retry_in_ms) = (self.config.max_offers, delay.as_millis() as u64);
            match &error {
                None => {
                    warn!(%file, offers = count, max_offers, retry_in_ms, "The consumer did not confirm the document as stored; the file stays in processing/ and is offered again.");
                }
                Some(e) => {
                    warn!(%file, error = %e, attempts = count, max_offers, retry_in_ms, "The document could not be read this time; the file stays in processing/ and is read again.");
                }
            }
            return;
        }
        let name = claim.name.clone();
        self.claims.remove(claimed);
        let reason = match error {
            None => format!(
                "{file}: offered {count} times but never confirmed as stored by the consumer (see its log); put the file back into the hot folder to try again"
            ),
            Some(e) => format!(
                "{e} (tried {count} times); put the file back into the hot folder to try again"
            ),
        };
        self.fail(claimed, path, &name, &reason).await;
    }

    /// Moves a file to `failed/NAME` with `NAME.reason.txt` saying why;
    /// `listed` is its name where it is (skipped while it stays, if it
    /// cannot be moved).
    async fn fail(&mut self, listed: &OsStr, path: &Path, name: &OsStr, reason: &str) {
        let file = name.to_string_lossy();
        self.status.failed += 1;
        match move_unique(path, &self.failed, name).await {
            Ok(dest) => {
                let mut reason_path = dest.clone().into_os_string();
                reason_path.push(".reason.txt");
                let text = format!("{reason}\n");
                if let Err(e) = tokio::fs::write(&reason_path, text).await {
                    error!(%file, error = %e, "Cannot write the reason file.");
                }
                warn!(%file, error = %reason, dest = %dest.display(), "Hot folder file moved to failed/.");
            }
            Err(e) => {
                self.stuck.insert(listed.to_os_string());
                error!(%file, error = %reason, move_error = %e, "Hot folder file cannot be moved to failed/; it is left in place and skipped.");
            }
        }
    }
}

/// The wait before offer `count + 1` of a file whose `count` offers were
/// not confirmed: `base`, doubled after each attempt, capped.
fn retry_delay(base: Duration, count: u32) -> Duration {
    let doublings = count.saturating_sub(1).min(16);
    base.saturating_mul(1u32 << doublings).min(MAX_RETRY_DELAY)
}

/// Whether a name can be a finished document (not a writer's temporary).
pub fn eligible(name: &OsStr) -> bool {
    let name = name.to_string_lossy().to_ascii_lowercase();
    const TEMP_SUFFIXES: [&str; 6] = [".part", ".tmp", ".partial", ".crdownload", ".swp", "~"];
    !name.is_empty() && !name.starts_with('.') && !TEMP_SUFFIXES.iter().any(|s| name.ends_with(s))
}

/// Tracks files until their size and modification time have stayed the
/// same for the settle interval. Pure: the caller supplies the listing and
/// the time.
#[derive(Debug)]
pub(crate) struct Settler<K> {
    seen: HashMap<K, Seen>,
}

impl<K> Default for Settler<K> {
    fn default() -> Self {
        Settler {
            seen: HashMap::new(),
        }
    }
}

#[derive(Debug)]
struct Seen {
    size: u64,
    mtime: Option<SystemTime>,
    since: Instant,
}

impl<K: Hash + Eq + Clone> Settler<K> {
    /// Takes a listing at `now`; returns the names that have settled (and
    /// forgets them). Names no longer listed are forgotten too.
    pub(crate) fn observe(
        &mut self,
        listing: &[(K, u64, Option<SystemTime>)],
        now: Instant,
        settle: Duration,
    ) -> Vec<K> {
        let listed: HashSet<&K> = listing.iter().map(|(k, ..)| k).collect();
        self.seen.retain(|k, _| listed.contains(k));
        let mut ready = Vec::new();
        for (name, size, mtime) in listing {
            match self.seen.get_mut(name) {
                Some(s) if s.size == *size && s.mtime == *mtime => {
                    if now.duration_since(s.since) >= settle {
                        ready.push(name.clone());
                    }
                }
                Some(s) => {
                    *s = Seen {
                        size: *size,
                        mtime: *mtime,
                        since: now,
                    };
                }
                None => {
                    self.seen.insert(
                        name.clone(),
                        Seen {
                            size: *size,
                            mtime: *mtime,
                            since: now,
                        },
                    );
                }
            }
        }
        for name in &ready {
            self.seen.remove(name);
        }
        ready
    }

    /// How many files are waiting to settle.
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }
}

/// A free name for `file` in `dir`: `NAME`, else `STEM-1.EXT`, `STEM-2.EXT`...
fn unique_name(file: &Path, taken: impl Fn(&OsStr) -> bool) -> Option<OsString> {
    let name = file.file_name()?.to_os_string();
    if !taken(&name) {
        return Some(name);
    }
    let stem = file.file_stem()?.to_os_string();
    let ext = file.extension();
    (1..10_000).find_map(|i| {
        let mut n = stem.clone();
        n.push(format!("-{i}"));
        if let Some(ext) = ext {
            n.push(".");
            n.push(ext);
        }
        (!taken(&n)).then_some(n)
    })
}

/// Moves `src` into `dir` as `name`, or a free name like it, durably;
/// returns the new path. On the blocking pool: the fsyncs block.
///
/// `Ok` means the file is at the new path (if syncing a folder fails after
/// that, it is logged: the move is done but a crash could undo it); `Err`
/// means it is still at `src` and nothing was left in `dir`.
async fn move_unique(src: &Path, dir: &Path, name: &OsStr) -> Result<PathBuf, ScanError> {
    let (from, to, name) = (src.to_path_buf(), dir.to_path_buf(), name.to_os_string());
    tokio::task::spawn_blocking(move || move_durably(&from, &to, &name))
        .await
        .map_err(|e| {
            ScanError::io(
                src,
                "moving",
                std::io::Error::other(format!("the move task failed: {e}")),
            )
        })?
}

/// See [`move_unique`]: rename (or, across file systems, a copy that is
/// fsynced under a temporary name, renamed into place and its folder
/// fsynced before the source is removed), then fsync of both folders.
fn move_durably(src: &Path, dir: &Path, name: &OsStr) -> Result<PathBuf, ScanError> {
    let name = unique_name(Path::new(name), |n| {
        // A link there (a refused one, maybe dangling) takes its name too.
        std::fs::symlink_metadata(dir.join(n)).is_ok()
    })
    .ok_or_else(|| ScanError::Io {
        path: dir.to_path_buf(),
        action: "finding a free name",
        source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free name"),
    })?;
    let dest = dir.join(name);
    let src_dir = parent_dir(src);
    match std::fs::rename(src, &dest) {
        Ok(()) => {
            if let Err(e) = sync_dir(dir) {
                error!(dest = %dest.display(), error = %e, "File moved, but its new folder cannot be synced; a crash now could undo the move.");
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => {
            copy_durably(src, dir, &dest)?;
            if let Err(e) = std::fs::remove_file(src) {
                // Keep "Err = still at src, nothing in dir".
                let _ = std::fs::remove_file(&dest);
                let _ = sync_dir(dir);
                return Err(ScanError::io(
                    src,
                    "removing after copying across file systems",
                    e,
                ));
            }
        }
        Err(e) => return Err(ScanError::io(src, "moving", e)),
    }
    if let Err(e) = sync_dir(src_dir) {
        error!(src = %src.display(), error = %e, "File moved, but the folder it left cannot be synced; a crash now could bring it back.");
    }
    Ok(dest)
}

/// Copies `src` to `dest` (in `dir`, on another file system) so that the
/// copy is complete and durable once `dest` exists: a temporary file in
/// `dir`, fsynced, renamed to `dest` without overwriting, `dir` fsynced.
/// On an error nothing is left in `dir`.
///
/// A symbolic link is copied as a link (made anew at `dest`, pointing
/// where it points), never through; anything else that is not a regular
/// file is refused. The opened file must be the one `symlink_metadata`
/// saw (see [`crate::files::read_limited`] for why not `O_NOFOLLOW`).
fn copy_durably(src: &Path, dir: &Path, dest: &Path) -> Result<(), ScanError> {
    use std::os::unix::fs::MetadataExt as _;
    let copy_err = |e| ScanError::io(src, "copying across file systems", e);
    let refused = |why: &str| copy_err(std::io::Error::new(std::io::ErrorKind::InvalidInput, why));
    let before = std::fs::symlink_metadata(src).map_err(copy_err)?;
    if before.file_type().is_symlink() {
        let target = std::fs::read_link(src).map_err(copy_err)?;
        // Fails rather than overwrites if `dest` exists; a link is made
        // whole or not at all.
        std::os::unix::fs::symlink(&target, dest).map_err(copy_err)?;
        if let Err(e) = sync_dir(dir) {
            let _ = std::fs::remove_file(dest);
            return Err(e);
        }
        return Ok(());
    }
    if !before.is_file() {
        return Err(refused(
            "not a regular file (a pipe, socket or device); it cannot be copied",
        ));
    }
    let mut input = std::fs::File::open(src).map_err(copy_err)?;
    let meta = input.metadata().map_err(copy_err)?;
    if (meta.dev(), meta.ino()) != (before.dev(), before.ino()) {
        return Err(refused(
            "the file was replaced (by a link or another file) while it was being opened",
        ));
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".hotfolder-")
        .suffix(".part")
        .tempfile_in(dir)
        .map_err(|e| ScanError::io(dir, "creating a temporary file", e))?;
    std::io::copy(&mut input, tmp.as_file_mut()).map_err(copy_err)?;
    // The temporary file is 0600; keep the source's mode.
    let _ = tmp.as_file().set_permissions(meta.permissions());
    tmp.as_file()
        .sync_all()
        .map_err(|e| ScanError::io(dest, "syncing the copy", e))?;
    tmp.persist_noclobber(dest)
        .map_err(|e| ScanError::io(dest, "renaming the copy into place", e.error))?;
    if let Err(e) = sync_dir(dir) {
        let _ = std::fs::remove_file(dest);
        return Err(e);
    }
    Ok(())
}

/// The folder holding `path` (`.` for a bare name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Syncs a folder, so that a rename or removal in it survives a crash
/// (a file's own fsync does not cover its name).
fn sync_dir(dir: &Path) -> Result<(), ScanError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| ScanError::io(dir, "syncing the folder", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_are_not_eligible() {
        for n in [
            ".hidden.pdf",
            "a.part",
            "a.PDF.tmp",
            "x.partial",
            "x~",
            "y.crdownload",
        ] {
            assert!(!eligible(OsStr::new(n)), "{n}");
        }
        for n in ["scan.pdf", "fax.TIF", "page 1.png", "part.pdf"] {
            assert!(eligible(OsStr::new(n)), "{n}");
        }
    }

    #[test]
    fn a_file_settles_only_after_an_unchanged_interval() {
        let settle = Duration::from_secs(2);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_millis(s);
        let m1 = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(100));
        let m2 = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(101));
        let mut s = Settler::default();
        // Growing: never ready.
        assert!(s.observe(&[("a", 10, m1)], at(0), settle).is_empty());
        assert!(s.observe(&[("a", 20, m1)], at(1500), settle).is_empty());
        assert!(s.observe(&[("a", 30, m2)], at(3000), settle).is_empty());
        // Same size but a new mtime restarts the clock.
        assert!(s.observe(&[("a", 30, m1)], at(4000), settle).is_empty());
        assert!(s.observe(&[("a", 30, m1)], at(5900), settle).is_empty());
        assert_eq!(s.len(), 1);
        // Unchanged for 2 s: ready once, then forgotten.
        assert_eq!(s.observe(&[("a", 30, m1)], at(6000), settle), vec!["a"]);
        assert_eq!(s.len(), 0);
        // A file that disappears is forgotten.
        assert!(s.observe(&[("b", 1, m1)], at(7000), settle).is_empty());
        assert!(s.observe(&[], at(8000), settle).is_empty());
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn claims_are_parsed_from_their_names_in_processing() {
        let now = Instant::now();
        let c = Claim::parse(OsStr::new("0123456789abcdef-scan 1.pdf"), now).unwrap();
        assert_eq!(
            (c.key.as_str(), c.name.as_os_str()),
            ("0123456789abcdef", OsStr::new("scan 1.pdf"))
        );
        assert_eq!(c.offers, 0);
        let c = Claim::parse(OsStr::new("0123456789abcdef--x"), now).unwrap();
        assert_eq!(c.name, "-x");
        for n in [
            "0123456789abcdef-",
            "0123456789abcdef",
            "0123456789ABCDEF-a.pdf",
            "0123456789abcdeg-a.pdf",
            "0123456789abcdef_a.pdf",
            "notes.txt",
            "",
        ] {
            assert!(Claim::parse(OsStr::new(n), now).is_none(), "{n}");
        }
        let key = new_key();
        assert_eq!(key.len(), KEY_LEN);
        let mut name = OsString::from(&key);
        name.push("-a.png");
        assert_eq!(Claim::parse(&name, now).unwrap().key, key);
    }

    #[test]
    fn retries_back_off_up_to_a_cap() {
        let base = Duration::from_secs(10);
        assert_eq!(retry_delay(base, 1), Duration::from_secs(10));
        assert_eq!(retry_delay(base, 2), Duration::from_secs(20));
        assert_eq!(retry_delay(base, 4), Duration::from_secs(80));
        assert_eq!(retry_delay(base, 30), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(base, u32::MAX), MAX_RETRY_DELAY);
        assert_eq!(retry_delay(Duration::ZERO, 3), Duration::ZERO);
    }

    #[test]
    fn a_move_is_complete_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let done = dir.path().join("done");
        std::fs::create_dir(&done).unwrap();
        let src = dir.path().join("scan.pdf");
        std::fs::write(&src, b"one").unwrap();
        std::fs::write(done.join("scan.pdf"), b"older").unwrap();
        let dest = move_durably(&src, &done, OsStr::new("scan.pdf")).unwrap();
        assert_eq!(dest, done.join("scan-1.pdf"));
        assert!(!src.exists());
        assert_eq!(std::fs::read(&dest).unwrap(), b"one");
        assert_eq!(std::fs::read(done.join("scan.pdf")).unwrap(), b"older");
        // The cross-device path, exercised directly on one file system.
        let other = dir.path().join("other.png");
        std::fs::write(&other, b"two").unwrap();
        let copied = done.join("other.png");
        copy_durably(&other, &done, &copied).unwrap();
        assert_eq!(std::fs::read(&copied).unwrap(), b"two");
        // An existing name is never overwritten, and no temporary is left.
        let err = copy_durably(&other, &done, &copied).unwrap_err();
        assert!(err.to_string().contains("other.png"), "{err}");
        let mut names: Vec<_> = std::fs::read_dir(&done)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["other.png", "scan-1.pdf", "scan.pdf"]);
    }

    #[test]
    fn a_link_is_copied_across_file_systems_as_a_link_never_through() {
        let dir = tempfile::tempdir().unwrap();
        let failed = dir.path().join("failed");
        std::fs::create_dir(&failed).unwrap();
        let secret = dir.path().join("appliance.toml");
        std::fs::write(&secret, b"secret").unwrap();
        let link = dir.path().join("x.tif");
        std::os::unix::fs::symlink(&secret, &link).unwrap();
        let dest = failed.join("x.tif");
        copy_durably(&link, &failed, &dest).unwrap();
        let meta = std::fs::symlink_metadata(&dest).unwrap();
        assert!(meta.file_type().is_symlink());
        assert_eq!(std::fs::read_link(&dest).unwrap(), secret);
        // Never over an existing name, and a dangling link takes its name.
        assert!(copy_durably(&link, &failed, &dest).is_err());
        std::fs::remove_file(&secret).unwrap();
        assert_eq!(
            move_durably(&link, &failed, OsStr::new("x.tif")).unwrap(),
            failed.join("x-1.tif")
        );
    }

    #[test]
    fn names_in_done_are_never_overwritten() {
        let taken = ["scan.pdf", "scan-1.pdf", "notes"];
        let f = |n: &OsStr| taken.iter().any(|t| OsStr::new(t) == n);
        assert_eq!(
            unique_name(Path::new("/in/scan.pdf"), f).unwrap(),
            "scan-2.pdf"
        );
        assert_eq!(unique_name(Path::new("/in/notes"), f).unwrap(), "notes-1");
        assert_eq!(unique_name(Path::new("/in/new.png"), f).unwrap(), "new.png");
    }
}
