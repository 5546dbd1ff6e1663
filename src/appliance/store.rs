//! The appliance's durable state: outbox jobs, inbox documents and their
//! history in SQLite, and every page as a TIFF-F file beside it.
//!
//! Durability rules, which the fax sessions rely on:
//! - A job's pages are on disk (fsynced, then renamed) before the job row
//!   is committed, so an accepted `send` is never lost.
//! - A received page is written and fsynced, then counted in the same
//!   transaction that records it, before the session may answer MCF.
//! - An inbox document is keyed by (sender, job id): a resumed job finds
//!   the pages it already delivered, and a page that arrives twice (MCF
//!   lost on the way back) is recognised by its index and not stored again.
//!
//! SQLite calls block, so every method runs on the blocking pool behind a
//! mutex: the store is one writer, like an actor with a queue.

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow, bail};
use faxgate_fax::tiff::{TiffWriterOptions, write_tiff};
use faxgate_fax::{Bitmap, Coding, Resolution};
use rusqlite::{Connection, OptionalExtension as _, params};
use serde::Serialize;

use crate::print::{FaxPage, PrinterJob};

/// The states of an outbox job. `Done`, `Failed` and `Cancelled` are final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waiting for its first attempt.
    Queued,
    /// Asking the relay for a session with the destination.
    Connecting,
    /// In a session, sending page `delivered + 1`.
    Sending,
    /// Waiting until `next_attempt` after a failure.
    Retrying,
    /// Every page delivered (MCF for each).
    Done,
    /// Given up; `reason` says why.
    Failed,
    /// Cancelled by the user; pages already delivered stay delivered.
    Cancelled,
}

impl JobState {
    fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Connecting => "connecting",
            JobState::Sending => "sending",
            JobState::Retrying => "retrying",
            JobState::Done => "done",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    fn parse(s: &str) -> anyhow::Result<JobState> {
        Ok(match s {
            "queued" => JobState::Queued,
            "connecting" => JobState::Connecting,
            "sending" => JobState::Sending,
            "retrying" => JobState::Retrying,
            "done" => JobState::Done,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            other => bail!("unknown job state {other:?} in the store"),
        })
    }

    /// Whether nothing more will happen to the job.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Done | JobState::Failed | JobState::Cancelled
        )
    }
}

/// An outbox job as the panel shows it.
#[derive(Clone, Debug, Serialize)]
pub struct JobInfo {
    /// The job id: 16 hex digits, also sent to the receiver so that a
    /// resumed job is recognised.
    pub id: String,
    /// The relay user it goes to.
    pub to: String,
    /// A title for lists (the file name, or "scan").
    pub title: String,
    /// Pages in the document.
    pub pages: u32,
    /// Pages delivered (MCF received).
    pub delivered: u32,
    /// Where the job is.
    pub state: JobState,
    /// Why it is retrying, failed or cancelled.
    pub reason: Option<String>,
    /// Attempts made so far.
    pub attempts: u32,
    /// When the next attempt is due (Unix ms), while retrying.
    pub next_attempt_ms: Option<i64>,
    /// The document's resolution.
    pub resolution: String,
    /// The document's width in pels.
    pub width: u32,
    /// When the job was accepted (Unix ms).
    pub created_ms: i64,
    /// When it last changed (Unix ms).
    pub updated_ms: i64,
    /// The user asked to cancel it.
    pub cancel_requested: bool,
}

impl fmt::Display for JobInfo {
    /// One line: `sending page 3 of 10`, `retrying at ... (reason)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.state {
            JobState::Sending => write!(
                f,
                "sending page {} of {}",
                (self.delivered + 1).min(self.pages),
                self.pages
            ),
            JobState::Retrying => {
                let at = self
                    .next_attempt_ms
                    .map(format_ms)
                    .unwrap_or_else(|| "?".into());
                write!(
                    f,
                    "retrying at {at} ({}; {} of {} pages delivered)",
                    self.reason.as_deref().unwrap_or("no reason"),
                    self.delivered,
                    self.pages
                )
            }
            JobState::Done => write!(f, "done, {} pages", self.delivered),
            JobState::Failed | JobState::Cancelled => write!(
                f,
                "{}: {} ({} of {} pages delivered)",
                self.state.as_str(),
                self.reason.as_deref().unwrap_or("no reason"),
                self.delivered,
                self.pages
            ),
            JobState::Queued | JobState::Connecting => f.write_str(self.state.as_str()),
        }
    }
}

/// Where a received document is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum InboxState {
    /// A session is delivering pages now.
    Receiving,
    /// The session broke off; the sender will resume it.
    Interrupted,
    /// Every page arrived (EOP).
    Complete,
    /// The sender ended early (a cancel): only the complete pages are kept.
    Partial,
}

impl InboxState {
    fn as_str(self) -> &'static str {
        match self {
            InboxState::Receiving => "receiving",
            InboxState::Interrupted => "interrupted",
            InboxState::Complete => "complete",
            InboxState::Partial => "partial",
        }
    }

    fn parse(s: &str) -> anyhow::Result<InboxState> {
        Ok(match s {
            "receiving" => InboxState::Receiving,
            "interrupted" => InboxState::Interrupted,
            "complete" => InboxState::Complete,
            "partial" => InboxState::Partial,
            other => bail!("unknown inbox state {other:?} in the store"),
        })
    }
}

/// What the output stage has done with a received document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PrintState {
    /// Not complete yet, or waiting for the printer.
    Pending,
    /// Held for release (`inbox.print = false`).
    Held,
    /// The printer accepted it as a job (`printer_job`), which is being
    /// followed until it ends; never sent again meanwhile.
    Submitted,
    /// Printed.
    Printed,
    /// The printer refused it for good; `print_reason` says why.
    Failed,
}

impl PrintState {
    fn as_str(self) -> &'static str {
        match self {
            PrintState::Pending => "pending",
            PrintState::Held => "held",
            PrintState::Submitted => "submitted",
            PrintState::Printed => "printed",
            PrintState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> anyhow::Result<PrintState> {
        Ok(match s {
            "pending" => PrintState::Pending,
            "held" => PrintState::Held,
            "submitted" => PrintState::Submitted,
            "printed" => PrintState::Printed,
            "failed" => PrintState::Failed,
            other => bail!("unknown print state {other:?} in the store"),
        })
    }
}

/// A received document as the panel shows it.
#[derive(Clone, Debug, Serialize)]
pub struct InboxDoc {
    /// Local document number.
    pub id: i64,
    /// The relay user that sent it.
    pub from: String,
    /// The sender's job id; `JOB+N` for a document that continues job
    /// `JOB` from its page N + 1 (see [`Store::begin_receive`]).
    pub job_id: String,
    /// The sender's TSI.
    pub remote_ident: Option<String>,
    /// Pages the sender announced (for a continuation: those from
    /// `first_page` on).
    pub pages_expected: Option<u32>,
    /// The index in the sender's document of this document's first page:
    /// 0, or N for a continuation `JOB+N`.
    pub first_page: u32,
    /// Pages stored (always a prefix of the document).
    pub pages: u32,
    /// Reception state.
    pub state: InboxState,
    /// Output state.
    pub print: PrintState,
    /// Why printing failed or is waiting; once printed, where it went
    /// (the file, the IPP job).
    pub print_reason: Option<String>,
    /// The resolution of the stored pages.
    pub resolution: Option<String>,
    /// Where the archived PDF is, once archived.
    pub archived: Option<String>,
    /// Why the last attempt to archive it failed, while it is not
    /// archived (printing goes on regardless).
    pub archive_error: Option<String>,
    /// The printer job made of it, once a printer accepted it (kept
    /// after it printed, as a record).
    pub printer_job: Option<PrinterJob>,
    /// When the first page arrived (Unix ms).
    pub created_ms: i64,
    /// When it last changed (Unix ms).
    pub updated_ms: i64,
}

/// One line of history.
#[derive(Clone, Debug, Serialize)]
pub struct HistoryEntry {
    /// When (Unix ms).
    pub at_ms: i64,
    /// The job id or `inbox:N`.
    pub subject: String,
    /// What happened.
    pub message: String,
}

/// The store. Cheap to clone; all clones share one connection.
#[derive(Clone, Debug)]
pub struct Store {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    dir: PathBuf,
}

const SCHEMA: &str = "
PRAGMA journal_mode = WAL;
PRAGMA synchronous = FULL;
CREATE TABLE IF NOT EXISTS outbox (
    id TEXT PRIMARY KEY,
    to_user TEXT NOT NULL,
    title TEXT NOT NULL,
    pages INTEGER NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    reason TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt INTEGER,
    resolution TEXT NOT NULL,
    width INTEGER NOT NULL,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS inbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    from_user TEXT NOT NULL,
    job_id TEXT NOT NULL,
    remote_ident TEXT,
    pages_expected INTEGER,
    pages INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    print_state TEXT NOT NULL,
    print_reason TEXT,
    resolution TEXT,
    archived TEXT,
    created INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    UNIQUE (from_user, job_id)
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    subject TEXT NOT NULL,
    message TEXT NOT NULL
);
";

/// Columns added after the first release, as (table, column,
/// declaration). A store made before a column existed gains it when it is
/// opened ([`migrate`]); new stores get them the same way, so there is one
/// path for both. Only ever append, and only columns that may be NULL or
/// have a default: old rows keep working.
const ADDED_COLUMNS: [(&str, &str, &str); 3] = [
    ("inbox", "archive_error", "TEXT"),
    ("inbox", "printer_job", "TEXT"),
    ("inbox", "printer_job_id", "INTEGER"),
];

/// Adds the [`ADDED_COLUMNS`] a store lacks, in one transaction.
fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let tx = conn.transaction()?;
    for (table, column, decl) in ADDED_COLUMNS {
        let has: bool = tx.query_row(
            "SELECT COUNT(*) FROM pragma_table_info(?1) WHERE name = ?2",
            params![table, column],
            |r| r.get::<_, i64>(0).map(|n| n > 0),
        )?;
        if !has {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {decl}"))
                .with_context(|| format!("while adding {table}.{column}"))?;
        }
    }
    tx.commit()?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A Unix-ms time as RFC 3339 (UTC, seconds).
pub fn format_ms(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The name of a resolution in the store and the API.
pub fn resolution_name(r: Resolution) -> &'static str {
    match r {
        Resolution::Standard => "standard",
        Resolution::Fine => "fine",
        Resolution::SuperFine => "superfine",
        Resolution::R300 => "300",
        Resolution::R400 => "400",
    }
}

/// The inverse of [`resolution_name`].
pub fn parse_resolution(s: &str) -> anyhow::Result<Resolution> {
    Ok(match s {
        "standard" => Resolution::Standard,
        "fine" => Resolution::Fine,
        "superfine" => Resolution::SuperFine,
        "300" => Resolution::R300,
        "400" => Resolution::R400,
        other => bail!("unknown resolution {other:?}"),
    })
}

fn new_job_id() -> String {
    use rand::Rng as _;
    format!("{:016x}", rand::thread_rng().r#gen::<u64>())
}

/// Writes a file so that it survives a crash: temp file, fsync, rename,
/// fsync of the directory (created if missing, durably).
pub(crate) fn write_durable(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    let dir = path.parent().context("a page file has no folder")?;
    create_dir_durable(dir)?;
    let tmp = path.with_extension("tmp");
    let mut f =
        std::fs::File::create(&tmp).with_context(|| format!("while creating {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("while writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("while renaming to {}", path.display()))?;
    sync_dir(dir)
}

/// Creates `dir` and any missing folders above it, syncing the parent of
/// each one created: a new folder's entry is only durable once its parent
/// is synced, and the file written into it would be lost with it.
fn create_dir_durable(dir: &Path) -> anyhow::Result<()> {
    let mut missing = Vec::new();
    let mut d = dir;
    while !d.is_dir() {
        missing.push(d);
        match d.parent() {
            Some(p) => d = p,
            None => break,
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("while creating {}", dir.display()))?;
    for m in missing {
        if let Some(parent) = m.parent() {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// Syncs a folder, so that a rename or removal in it survives a crash.
pub(crate) fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("while syncing {}", dir.display()))
}

fn page_tiff(page: &Bitmap, resolution: Resolution) -> anyhow::Result<Vec<u8>> {
    write_tiff(
        std::slice::from_ref(page),
        Coding::Mmr,
        resolution,
        TiffWriterOptions {
            software: Some(format!("faxgate {}", env!("CARGO_PKG_VERSION"))),
            date_time: None,
            total_pages: Some(1),
        },
    )
    .context("while coding a page for the store")
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> anyhow::Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("while creating {}", dir.display()))?;
        let path = dir.join("store.db");
        let mut conn = Connection::open(&path)
            .with_context(|| format!("while opening the store {}", path.display()))?;
        conn.execute_batch(SCHEMA)
            .context("while creating the store's tables")?;
        migrate(&mut conn).context("while updating the store's tables")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(Store {
            inner: Arc::new(Mutex::new(Inner {
                conn,
                dir: dir.to_owned(),
            })),
        })
    }

    /// Runs `f` with the connection on the blocking pool.
    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Inner) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || {
            let mut guard = inner
                .lock()
                .map_err(|_| anyhow!("the store lock is poisoned"))?;
            f(&mut guard)
        })
        .await
        .context("the store task panicked")?
    }

    /// Accepts a new job: its pages are durable before this returns.
    ///
    /// The job row and its history line are one transaction: an error
    /// means no job was queued (its page files are removed again), so a
    /// user who sends again after an error does not send the fax twice.
    /// Errors other than [`check_document`]'s are the store's own.
    pub async fn add_job(
        &self,
        to: &str,
        title: &str,
        pages: Vec<Bitmap>,
        resolution: Resolution,
    ) -> anyhow::Result<JobInfo> {
        let (job, _) = self.queue(None, to, title, pages, resolution).await?;
        Ok(job)
    }

    /// As [`Store::add_job`], with the job id given by the source of the
    /// document (16 lowercase hex digits, like the ids the store makes):
    /// when a job with that id exists already, it is returned untouched
    /// with `false` and nothing is stored. A source that offers the same
    /// document again after a restart (the hot folder, whose key is the
    /// id) so makes one job, never two.
    pub async fn add_job_once(
        &self,
        id: &str,
        to: &str,
        title: &str,
        pages: Vec<Bitmap>,
        resolution: Resolution,
    ) -> anyhow::Result<(JobInfo, bool)> {
        if id.len() != 16 || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            bail!("`{id}` is no job id (16 lowercase hex digits)");
        }
        self.queue(Some(id.to_owned()), to, title, pages, resolution)
            .await
    }

    /// Queues a job under `id` (a new id when `None`) unless that id is
    /// taken: see [`Store::add_job_once`].
    async fn queue(
        &self,
        id: Option<String>,
        to: &str,
        title: &str,
        pages: Vec<Bitmap>,
        resolution: Resolution,
    ) -> anyhow::Result<(JobInfo, bool)> {
        let width = check_document(&pages)?;
        let (to, title) = (to.to_owned(), title.to_owned());
        self.with(move |s| {
            let id = match id {
                Some(id) => {
                    if let Some(job) = job_row(&s.conn, &id)? {
                        return Ok((job, false));
                    }
                    id
                }
                None => new_job_id(),
            };
            let dir = s.dir.join("outbox").join(&id);
            let queued = pages
                .iter()
                .enumerate()
                .try_for_each(|(i, p)| {
                    write_durable(&dir.join(format!("{i:04}.tif")), &page_tiff(p, resolution)?)
                })
                .and_then(|()| {
                    let job = NewJob {
                        to: &to,
                        title: &title,
                        pages: pages.len(),
                        resolution,
                        width,
                    };
                    insert_job(&mut s.conn, &id, &job)
                });
            if queued.is_err() {
                // Nothing refers to the pages: best effort, like a temp file.
                let _ = std::fs::remove_dir_all(&dir);
            }
            queued.map(|job| (job, true))
        })
        .await
    }

    /// Runs `sql` on the store's connection: tests use it to make writes
    /// fail (a trigger, `PRAGMA query_only`) as a full disk would.
    #[cfg(test)]
    pub(crate) async fn execute_batch_for_test(&self, sql: &'static str) -> anyhow::Result<()> {
        self.with(move |s| Ok(s.conn.execute_batch(sql)?)).await
    }

    /// One job.
    pub async fn job(&self, id: &str) -> anyhow::Result<Option<JobInfo>> {
        let id = id.to_owned();
        self.with(move |s| job_row(&s.conn, &id)).await
    }

    /// The newest jobs first.
    pub async fn jobs(&self, limit: usize) -> anyhow::Result<Vec<JobInfo>> {
        self.with(move |s| {
            let sql = "SELECT id FROM outbox ORDER BY created DESC, id LIMIT ?1";
            jobs_where(&s.conn, sql, [limit])
        })
        .await
    }

    /// Jobs whose next attempt is due at `now`, oldest first.
    pub async fn due_jobs(&self, now: i64) -> anyhow::Result<Vec<JobInfo>> {
        self.with(move |s| {
            let sql = "SELECT id FROM outbox WHERE (state = 'queued' OR
                   (state = 'retrying' AND COALESCE(next_attempt, 0) <= ?1))
                 ORDER BY created, id";
            jobs_where(&s.conn, sql, [now])
        })
        .await
    }

    /// The earliest `next_attempt` of a retrying job.
    pub async fn next_due(&self) -> anyhow::Result<Option<i64>> {
        self.with(|s| {
            Ok(s.conn.query_row(
                "SELECT MIN(next_attempt) FROM outbox WHERE state = 'retrying'",
                [],
                |r| r.get::<_, Option<i64>>(0),
            )?)
        })
        .await
    }

    /// After a restart, jobs that were in a session go back to retrying
    /// at once, and receptions that were open become interrupted. A job
    /// whose every page had its MCF is done: the restart only cut short
    /// the end of its call (DCN, hangup) or the recording of it.
    pub async fn recover(&self) -> anyhow::Result<usize> {
        self.with(|s| {
            let now = now_ms();
            let done: Vec<String> = {
                let mut q = s.conn.prepare(
                    "SELECT id FROM outbox WHERE state IN ('connecting', 'sending')
                       AND delivered >= pages",
                )?;
                q.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?
            };
            for id in &done {
                s.conn.execute(
                    "UPDATE outbox SET state = 'done', updated = ?2,
                       reason = 'every page confirmed before a restart'
                     WHERE id = ?1",
                    params![id, now],
                )?;
                history(&s.conn, id, "done: every page confirmed before a restart")?;
            }
            let n = s.conn.execute(
                "UPDATE outbox SET state = 'retrying', next_attempt = ?1, updated = ?1,
                   reason = 'interrupted by a restart'
                 WHERE state IN ('connecting', 'sending')",
                [now],
            )?;
            s.conn.execute(
                "UPDATE inbox SET state = 'interrupted', updated = ?1 WHERE state = 'receiving'",
                [now],
            )?;
            Ok(n)
        })
        .await
    }

    /// Moves a job to `state` with an optional reason. `attempt` counts
    /// one more attempt (on `Connecting`).
    pub async fn set_job_state(
        &self,
        id: &str,
        state: JobState,
        reason: Option<String>,
        next_attempt: Option<i64>,
    ) -> anyhow::Result<JobInfo> {
        let id = id.to_owned();
        self.with(move |s| {
            let now = now_ms();
            let bump = i64::from(state == JobState::Connecting);
            // The state and its history line change together: a state
            // whose recording failed is not left behind (see `outbox`).
            let tx = s.conn.transaction()?;
            let n = tx.execute(
                "UPDATE outbox SET state = ?2, reason = ?3, next_attempt = ?4, updated = ?5,
                   attempts = attempts + ?6
                 WHERE id = ?1",
                params![id, state.as_str(), reason, next_attempt, now, bump],
            )?;
            anyhow::ensure!(n == 1, "no job {id}");
            if state != JobState::Connecting && state != JobState::Sending {
                let text = match &reason {
                    Some(r) => format!("{}: {r}", state.as_str()),
                    None => state.as_str().to_owned(),
                };
                history(&tx, &id, &text)
                    .with_context(|| format!("while recording job {id} in the history"))?;
            }
            let job = job_row(&tx, &id)?.context("the job vanished")?;
            tx.commit()
                .with_context(|| format!("while committing the state of job {id}"))?;
            Ok(job)
        })
        .await
    }

    /// Records that page `index` (0-based, whole document) got MCF.
    pub async fn page_delivered(&self, id: &str, index: u32) -> anyhow::Result<JobInfo> {
        let id = id.to_owned();
        self.with(move |s| {
            s.conn.execute(
                "UPDATE outbox SET delivered = MAX(delivered, ?2), state = 'sending', updated = ?3
                 WHERE id = ?1",
                params![id, index + 1, now_ms()],
            )?;
            job_row(&s.conn, &id)?.context("the job vanished")
        })
        .await
    }

    /// Marks a job for cancelling. A job not in a session is cancelled
    /// at once; a job in a session is cancelled by its session (DCN).
    pub async fn request_cancel(&self, id: &str) -> anyhow::Result<JobInfo> {
        let id = id.to_owned();
        self.with(move |s| {
            let job = job_row(&s.conn, &id)?.with_context(|| format!("no job {id}"))?;
            anyhow::ensure!(
                !job.state.is_final(),
                "job {id} is already {}",
                job.state.as_str()
            );
            let now = now_ms();
            s.conn.execute(
                "UPDATE outbox SET cancel_requested = 1, updated = ?2 WHERE id = ?1",
                params![id, now],
            )?;
            if matches!(job.state, JobState::Queued | JobState::Retrying) {
                s.conn.execute(
                    "UPDATE outbox SET state = 'cancelled', reason = 'cancelled by the user'
                     WHERE id = ?1",
                    [&id],
                )?;
                history(&s.conn, &id, "cancelled by the user before its session")?;
            }
            job_row(&s.conn, &id)?.context("the job vanished")
        })
        .await
    }

    /// Page `index` of a job, as a bitmap with its resolution.
    pub async fn job_page(&self, id: &str, index: u32) -> anyhow::Result<(Bitmap, Resolution)> {
        let id = id.to_owned();
        self.with(move |s| {
            let path = s
                .dir
                .join("outbox")
                .join(&id)
                .join(format!("{index:04}.tif"));
            read_page(&path)
        })
        .await
    }

    /// Opens the reception of a job from `from`: a new document, or the
    /// one a previous session of the same job left open (receiving or
    /// interrupted), or a complete one, whose pages a late session may
    /// repeat but not add to ([`Store::store_page`]).
    ///
    /// A document that ended partial (the sender hung up with DCN
    /// mid-document: a cancel, or its last attempt) is closed and has gone
    /// to the output stage. Should the same job come back with pages it
    /// has not got, they go to a new document, `JOB+N`, which holds the
    /// job's pages from N on ([`InboxDoc::first_page`], N being the pages
    /// before it). That is the one choice that prints every page at least
    /// once and none twice: reopening the partial document would print
    /// its pages again with the rest (and change a document the printer
    /// may be reading), and refusing the session would have the sender
    /// retry until it gives up, the rest of the job never printed. A page
    /// of the partial document that the sender repeats is answered (MCF)
    /// without being stored again (see `inbound`).
    pub async fn begin_receive(
        &self,
        from: &str,
        job_id: &str,
        remote_ident: Option<String>,
        pages_expected: Option<u32>,
    ) -> anyhow::Result<InboxDoc> {
        let (from, job_id) = (from.to_owned(), job_id.to_owned());
        self.with(move |s| {
            let now = now_ms();
            let mut first_page = 0u32;
            loop {
                let key = continuation_key(&job_id, first_page);
                let expected = pages_expected.map(|n| n.saturating_sub(first_page));
                s.conn.execute(
                    "INSERT INTO inbox (from_user, job_id, remote_ident, pages_expected, state,
                       print_state, created, updated)
                     VALUES (?1, ?2, ?3, ?4, 'receiving', 'pending', ?5, ?5)
                     ON CONFLICT (from_user, job_id) DO UPDATE SET
                       state = CASE WHEN state IN ('complete', 'partial') THEN state ELSE 'receiving' END,
                       remote_ident = COALESCE(excluded.remote_ident, remote_ident),
                       pages_expected = COALESCE(excluded.pages_expected, pages_expected),
                       updated = ?5",
                    params![from, key, remote_ident, expected, now],
                )?;
                let id: i64 = s.conn.query_row(
                    "SELECT id FROM inbox WHERE from_user = ?1 AND job_id = ?2",
                    params![from, key],
                    |r| r.get(0),
                )?;
                let doc = inbox_row(&s.conn, id)?.context("the inbox document vanished")?;
                let more = doc.pages_expected.is_none_or(|n| doc.pages < n);
                if doc.state == InboxState::Partial && doc.pages > 0 && more {
                    first_page = first_page.saturating_add(doc.pages);
                    continue;
                }
                return Ok(doc);
            }
        })
        .await
    }

    /// Makes page `index` of document `doc` durable. Returns `false` when
    /// that page was already stored (a repeated page after a lost MCF).
    pub async fn store_page(
        &self,
        doc: i64,
        index: u32,
        page: Bitmap,
        resolution: Resolution,
    ) -> anyhow::Result<bool> {
        self.with(move |s| {
            let (stored, state, from, job_id): (u32, String, String, String) = s.conn.query_row(
                "SELECT pages, state, from_user, job_id FROM inbox WHERE id = ?1",
                [doc],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;
            if index < stored {
                return Ok(false);
            }
            // A complete or partial document has gone to the output stage
            // and is never reopened (`finish_receive` leaves it as it is):
            // a page added now would never be printed, while the sender
            // counts it delivered. Fail loudly instead, so that no MCF
            // confirms it. (`begin_receive` sends a job that comes back
            // after a partial end to a new document; this guards against
            // a session that raced with the end of another.)
            let state = InboxState::parse(&state)?;
            anyhow::ensure!(
                !matches!(state, InboxState::Complete | InboxState::Partial),
                "inbox document {doc} (job {job_id} from {from}) is already {} with {stored} \
                 pages; page {} cannot be added to it",
                state.as_str(),
                index + 1
            );
            anyhow::ensure!(
                index == stored,
                "page {} arrived but only {stored} pages are stored; pages must arrive in order",
                index + 1
            );
            let path = s
                .dir
                .join("inbox")
                .join(doc.to_string())
                .join(format!("{index:04}.tif"));
            write_durable(&path, &page_tiff(&page, resolution)?)?;
            let tx = s.conn.transaction()?;
            tx.execute(
                "UPDATE inbox SET pages = ?2, resolution = ?3, updated = ?4 WHERE id = ?1",
                params![doc, index + 1, resolution_name(resolution), now_ms()],
            )?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    /// Ends a reception in `state`; complete and partial documents go to
    /// the output stage as `print` says (pending or held).
    pub async fn finish_receive(
        &self,
        doc: i64,
        state: InboxState,
        hold: bool,
    ) -> anyhow::Result<InboxDoc> {
        self.with(move |s| {
            let now = now_ms();
            s.conn.execute(
                "UPDATE inbox SET state = ?2, updated = ?3,
                   print_state = CASE WHEN print_state = 'pending' AND ?4 THEN 'held' ELSE print_state END
                 WHERE id = ?1 AND state NOT IN ('complete', 'partial')",
                params![doc, state.as_str(), now, hold && matches!(state, InboxState::Complete | InboxState::Partial)],
            )?;
            let d = inbox_row(&s.conn, doc)?.context("the inbox document vanished")?;
            history(
                &s.conn,
                &format!("inbox:{doc}"),
                &format!("{} from {} ({} pages)", d.state.as_str(), d.from, d.pages),
            )?;
            Ok(d)
        })
        .await
    }

    /// Closes, as partial, the interrupted receptions no sender will
    /// resume: at once those none can (a telephone call, a caller without
    /// faxgate's job tag: `pages_expected` unknown), the others once
    /// untouched for `window`. Each goes to the output stage (held if
    /// `hold`) with a note saying why; documents without a page stay as
    /// they are (nothing to print). Returns the documents closed.
    ///
    /// A sender that comes back later still loses nothing and prints
    /// nothing twice: [`Store::begin_receive`] gives the pages not yet
    /// here a document of their own.
    pub async fn close_abandoned(
        &self,
        window: Duration,
        hold: bool,
    ) -> anyhow::Result<Vec<InboxDoc>> {
        self.with(move |s| {
            let now = now_ms();
            let cutoff = now.saturating_sub(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
            let tx = s.conn.transaction()?;
            let due: Vec<(i64, bool)> = {
                let mut q = tx.prepare(
                    "SELECT id, pages_expected IS NULL FROM inbox
                     WHERE state = 'interrupted' AND pages > 0
                       AND (pages_expected IS NULL OR updated <= ?1)
                     ORDER BY id",
                )?;
                q.query_map([cutoff], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?
            };
            for &(id, unresumable) in &due {
                tx.execute(
                    "UPDATE inbox SET state = 'partial', updated = ?2,
                       print_state = CASE WHEN print_state = 'pending' AND ?3 THEN 'held'
                                          ELSE print_state END
                     WHERE id = ?1",
                    params![id, now, hold],
                )?;
                let why = if unresumable {
                    "partial: the sender cannot resume this reception".to_owned()
                } else {
                    format!(
                        "partial: the sender did not resume within {}",
                        humantime::format_duration(window)
                    )
                };
                history(&tx, &format!("inbox:{id}"), &why)?;
            }
            tx.commit()?;
            due.into_iter()
                .map(|(id, _)| inbox_row(&s.conn, id)?.context("the inbox document vanished"))
                .collect()
        })
        .await
    }

    /// Received documents, newest first.
    pub async fn inbox(&self, limit: usize) -> anyhow::Result<Vec<InboxDoc>> {
        self.with(move |s| {
            let sql = "SELECT id FROM inbox ORDER BY id DESC LIMIT ?1";
            docs_where(&s.conn, sql, [limit])
        })
        .await
    }

    /// One received document.
    pub async fn inbox_doc(&self, id: i64) -> anyhow::Result<Option<InboxDoc>> {
        self.with(move |s| inbox_row(&s.conn, id)).await
    }

    /// Documents complete (or partial) and waiting for the printer, or
    /// printing there (submitted).
    pub async fn print_queue(&self) -> anyhow::Result<Vec<InboxDoc>> {
        self.with(|s| {
            let sql = "SELECT id FROM inbox WHERE state IN ('complete', 'partial')
                   AND print_state IN ('pending', 'submitted') ORDER BY id";
            docs_where(&s.conn, sql, [])
        })
        .await
    }

    /// Documents held for release (count), for the "inbox full" check.
    pub async fn held_count(&self) -> anyhow::Result<usize> {
        self.with(|s| {
            Ok(s.conn.query_row(
                "SELECT COUNT(*) FROM inbox WHERE print_state IN ('held', 'pending', 'submitted')
                   AND state IN ('complete', 'partial')",
                [],
                |r| r.get::<_, i64>(0),
            )? as usize)
        })
        .await
    }

    /// Records that a document is archived at `path`.
    pub async fn set_archived(&self, id: i64, path: String) -> anyhow::Result<()> {
        self.with(move |s| {
            s.conn.execute(
                "UPDATE inbox SET archived = ?2, archive_error = NULL, updated = ?3
                 WHERE id = ?1",
                params![id, path, now_ms()],
            )?;
            history(
                &s.conn,
                &format!("inbox:{id}"),
                &format!("archived: {path}"),
            )?;
            Ok(())
        })
        .await
    }

    /// Records why a document could not be archived.
    pub async fn set_archive_failed(&self, id: i64, reason: String) -> anyhow::Result<()> {
        self.with(move |s| {
            s.conn.execute(
                "UPDATE inbox SET archive_error = ?2, updated = ?3 WHERE id = ?1",
                params![id, reason, now_ms()],
            )?;
            history(
                &s.conn,
                &format!("inbox:{id}"),
                &format!("archive failed: {reason}"),
            )?;
            Ok(())
        })
        .await
    }

    /// Records that a printer accepted a document as `job`: the document
    /// is `submitted`, and the job is followed from now on (after a
    /// restart too) instead of the document being sent again.
    pub async fn set_submitted(&self, id: i64, job: PrinterJob) -> anyhow::Result<()> {
        self.with(move |s| {
            let destination = job.destination();
            s.conn.execute(
                "UPDATE inbox SET print_state = 'submitted', print_reason = ?2,
                   printer_job = ?3, printer_job_id = ?4, updated = ?5 WHERE id = ?1",
                params![id, destination, job.printer, job.job_id, now_ms()],
            )?;
            history(
                &s.conn,
                &format!("inbox:{id}"),
                &format!("submitted: {destination}"),
            )?;
            Ok(())
        })
        .await
    }

    /// Sets what the output stage did with a document.
    pub async fn set_print_state(
        &self,
        id: i64,
        state: PrintState,
        reason: Option<String>,
    ) -> anyhow::Result<()> {
        self.with(move |s| {
            s.conn.execute(
                "UPDATE inbox SET print_state = ?2, print_reason = ?3, updated = ?4 WHERE id = ?1",
                params![id, state.as_str(), reason, now_ms()],
            )?;
            history(
                &s.conn,
                &format!("inbox:{id}"),
                &match &reason {
                    Some(r) => format!("{}: {r}", state.as_str()),
                    None => state.as_str().to_owned(),
                },
            )?;
            Ok(())
        })
        .await
    }

    /// Releases a held (or failed) document to the printer. An
    /// interrupted one with pages is closed as partial first: the user
    /// gives up waiting for its sender to resume (pages a resume brings
    /// later go to a document of their own).
    pub async fn release(&self, id: i64) -> anyhow::Result<InboxDoc> {
        self.with(move |s| {
            let d = inbox_row(&s.conn, id)?.with_context(|| format!("no inbox document {id}"))?;
            let interrupted = d.state == InboxState::Interrupted;
            anyhow::ensure!(
                !interrupted || d.pages > 0,
                "inbox document {id} is interrupted without a page; there is nothing to print"
            );
            anyhow::ensure!(
                interrupted || d.print == PrintState::Held || d.print == PrintState::Failed,
                "inbox document {id} is {}, not held",
                d.print.as_str()
            );
            anyhow::ensure!(
                d.state != InboxState::Receiving,
                "inbox document {id} is still being received"
            );
            s.conn.execute(
                "UPDATE inbox SET print_state = 'pending', print_reason = NULL,
                   printer_job = NULL, printer_job_id = NULL, updated = ?2,
                   state = CASE WHEN state = 'interrupted' THEN 'partial' ELSE state END
                 WHERE id = ?1",
                params![id, now_ms()],
            )?;
            if interrupted {
                history(
                    &s.conn,
                    &format!("inbox:{id}"),
                    "partial: released before its sender resumed",
                )?;
            }
            inbox_row(&s.conn, id)?.context("the inbox document vanished")
        })
        .await
    }

    /// The stored pages of a received document, for the output stage and
    /// for tests.
    pub async fn inbox_pages(&self, id: i64) -> anyhow::Result<Vec<FaxPage>> {
        self.with(move |s| {
            let pages: u32 =
                s.conn
                    .query_row("SELECT pages FROM inbox WHERE id = ?1", [id], |r| r.get(0))?;
            let dir = s.dir.join("inbox").join(id.to_string());
            (0..pages)
                .map(|i| {
                    let path = dir.join(format!("{i:04}.tif"));
                    let data = std::fs::read(&path)
                        .with_context(|| format!("while reading {}", path.display()))?;
                    let mut v = FaxPage::from_tiff(&data)
                        .with_context(|| format!("while reading {}", path.display()))?;
                    anyhow::ensure!(v.len() == 1, "{} has {} pages", path.display(), v.len());
                    Ok(v.remove(0))
                })
                .collect()
        })
        .await
    }

    /// Adds a line to the history (a session that ended without a
    /// document, a refused demand).
    pub async fn note(&self, subject: String, message: String) -> anyhow::Result<()> {
        self.with(move |s| Ok(history(&s.conn, &subject, &message)?))
            .await
    }

    /// The newest history entries for a subject (a job id or `inbox:N`),
    /// or for everything.
    pub async fn history(
        &self,
        subject: Option<String>,
        limit: usize,
    ) -> anyhow::Result<Vec<HistoryEntry>> {
        self.with(move |s| {
            let mut st = s.conn.prepare(
                "SELECT at, subject, message FROM history
                 WHERE ?1 IS NULL OR subject = ?1 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = st
                .query_map(params![subject, limit], |r| {
                    Ok(HistoryEntry {
                        at_ms: r.get(0)?,
                        subject: r.get(1)?,
                        message: r.get(2)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(rows)
        })
        .await
    }
}

fn read_page(path: &Path) -> anyhow::Result<(Bitmap, Resolution)> {
    let data = std::fs::read(path).with_context(|| format!("while reading {}", path.display()))?;
    let pages =
        FaxPage::from_tiff(&data).with_context(|| format!("while reading {}", path.display()))?;
    let page = pages
        .first()
        .with_context(|| format!("{} has no page", path.display()))?;
    let resolution = page
        .resolution()
        .with_context(|| format!("{} has no fax resolution", path.display()))?;
    let bmp = page
        .to_bitmap()
        .with_context(|| format!("while decoding {}", path.display()))?;
    Ok((bmp, resolution))
}

/// The jobs whose ids `sql` selects, in its order.
fn jobs_where(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> anyhow::Result<Vec<JobInfo>> {
    let ids: Vec<String> = conn
        .prepare(sql)?
        .query_map(params, |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    ids.iter()
        .filter_map(|id| job_row(conn, id).transpose())
        .collect()
}

/// The inbox documents whose ids `sql` selects, in its order.
fn docs_where(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> anyhow::Result<Vec<InboxDoc>> {
    let ids: Vec<i64> = conn
        .prepare(sql)?
        .query_map(params, |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    ids.iter()
        .filter_map(|id| inbox_row(conn, *id).transpose())
        .collect()
}

/// The columns of a new outbox row.
struct NewJob<'a> {
    to: &'a str,
    title: &'a str,
    pages: usize,
    resolution: Resolution,
    width: u32,
}

/// Inserts a queued job and its history line in one transaction.
fn insert_job(conn: &mut Connection, id: &str, job: &NewJob<'_>) -> anyhow::Result<JobInfo> {
    let tx = conn.transaction()?;
    tx.execute(
        "INSERT INTO outbox (id, to_user, title, pages, state, resolution, width, created, updated)
         VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?7)",
        params![
            id,
            job.to,
            job.title,
            job.pages,
            resolution_name(job.resolution),
            job.width,
            now_ms()
        ],
    )
    .context("while adding the job to the outbox")?;
    let text = format!("accepted {} pages for {}", job.pages, job.to);
    history(&tx, id, &text).context("while recording the new job in the history")?;
    let info = job_row(&tx, id)?.context("the new job vanished")?;
    tx.commit()
        .context("while committing the new job to the store")?;
    Ok(info)
}

/// Checks that `pages` can be one fax job: at least one page, all of one
/// width, which it returns. Its errors are the document's fault, unlike
/// the store's own in [`Store::add_job`].
pub fn check_document(pages: &[Bitmap]) -> anyhow::Result<u32> {
    let width = pages.first().context("the document has no pages")?.width();
    if let Some((i, p)) = pages.iter().enumerate().find(|(_, p)| p.width() != width) {
        bail!(
            "page {} is {} pels wide but page 1 is {width}; a fax document has one width",
            i + 1,
            p.width()
        );
    }
    Ok(width)
}

fn history(conn: &Connection, subject: &str, message: &str) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO history (at, subject, message) VALUES (?1, ?2, ?3)",
        params![now_ms(), subject, message],
    )?;
    Ok(())
}

fn job_row(conn: &Connection, id: &str) -> anyhow::Result<Option<JobInfo>> {
    let row = conn
        .query_row(
            "SELECT id, to_user, title, pages, delivered, state, reason, attempts, next_attempt,
               resolution, width, created, updated, cancel_requested
             FROM outbox WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    JobInfo {
                        id: r.get(0)?,
                        to: r.get(1)?,
                        title: r.get(2)?,
                        pages: r.get(3)?,
                        delivered: r.get(4)?,
                        state: JobState::Queued,
                        reason: r.get(6)?,
                        attempts: r.get(7)?,
                        next_attempt_ms: r.get(8)?,
                        resolution: r.get(9)?,
                        width: r.get(10)?,
                        created_ms: r.get(11)?,
                        updated_ms: r.get(12)?,
                        cancel_requested: r.get::<_, i64>(13)? != 0,
                    },
                    r.get::<_, String>(5)?,
                ))
            },
        )
        .optional()?;
    row.map(|(mut job, state)| {
        job.state = JobState::parse(&state)?;
        if job.state != JobState::Retrying {
            job.next_attempt_ms = None;
        }
        Ok(job)
    })
    .transpose()
}

/// The key of the document holding job `job_id` from page `first_page`
/// (0-based) on: the job id itself, or `JOB+N` for a continuation.
fn continuation_key(job_id: &str, first_page: u32) -> String {
    if first_page == 0 {
        job_id.to_owned()
    } else {
        format!("{job_id}+{first_page}")
    }
}

/// The first page a document holds, from its key (see
/// [`continuation_key`]); job ids themselves are hex digits.
fn first_page_of(key: &str) -> u32 {
    key.rsplit_once('+')
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(0)
}

fn inbox_row(conn: &Connection, id: i64) -> anyhow::Result<Option<InboxDoc>> {
    let row = conn
        .query_row(
            "SELECT id, from_user, job_id, remote_ident, pages_expected, pages, state,
               print_state, print_reason, resolution, archived, created, updated,
               archive_error, printer_job, printer_job_id
             FROM inbox WHERE id = ?1",
            [id],
            |r| {
                Ok((
                    InboxDoc {
                        id: r.get(0)?,
                        from: r.get(1)?,
                        job_id: r.get(2)?,
                        remote_ident: r.get(3)?,
                        pages_expected: r.get(4)?,
                        first_page: 0,
                        pages: r.get(5)?,
                        state: InboxState::Receiving,
                        print: PrintState::Pending,
                        print_reason: r.get(8)?,
                        resolution: r.get(9)?,
                        archived: r.get(10)?,
                        archive_error: r.get(13)?,
                        printer_job: match (r.get(14)?, r.get(15)?) {
                            (Some(printer), Some(job_id)) => Some(PrinterJob { printer, job_id }),
                            _ => None,
                        },
                        created_ms: r.get(11)?,
                        updated_ms: r.get(12)?,
                    },
                    r.get::<_, String>(6)?,
                    r.get::<_, String>(7)?,
                ))
            },
        )
        .optional()?;
    row.map(|(mut d, state, print)| {
        d.state = InboxState::parse(&state)?;
        d.print = PrintState::parse(&print)?;
        d.first_page = first_page_of(&d.job_id);
        Ok(d)
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(seed: u32) -> Bitmap {
        let mut b = Bitmap::new(1728, 40);
        for y in 0..40 {
            for x in (seed..1728).step_by(7) {
                b.set_pixel(x, y, (x + y) % 3 == 0);
            }
        }
        b
    }

    #[tokio::test]
    async fn jobs_keep_their_pages_and_states_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let job = store
            .add_job("osaka", "t", vec![page(1), page(2)], Resolution::Fine)
            .await
            .unwrap();
        assert_eq!(job.state, JobState::Queued);
        store
            .set_job_state(&job.id, JobState::Connecting, None, None)
            .await
            .unwrap();
        store.page_delivered(&job.id, 0).await.unwrap();
        // Another job had every page confirmed when the crash came (in
        // its DCN, say): it is done, not sent again.
        let full = store
            .add_job("osaka", "t", vec![page(1)], Resolution::Fine)
            .await
            .unwrap();
        store
            .set_job_state(&full.id, JobState::Sending, None, None)
            .await
            .unwrap();
        store.page_delivered(&full.id, 0).await.unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.recover().await.unwrap(), 1, "one job to resume");
        let j = store.job(&job.id).await.unwrap().unwrap();
        assert_eq!(
            (j.state, j.delivered, j.attempts),
            (JobState::Retrying, 1, 1)
        );
        let due = store.due_jobs(now_ms()).await.unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].id, job.id);
        let (bmp, res) = store.job_page(&job.id, 1).await.unwrap();
        assert_eq!((bmp, res), (page(2), Resolution::Fine));
        assert!(j.to_string().contains("1 of 2 pages delivered"), "{j}");
        let f = store.job(&full.id).await.unwrap().unwrap();
        assert_eq!((f.state, f.delivered), (JobState::Done, 1));
        let noted = store.history(Some(full.id.clone()), 10).await.unwrap();
        assert!(
            noted
                .iter()
                .any(|h| h.message.contains("every page confirmed")),
            "{noted:?}"
        );
    }

    #[tokio::test]
    async fn a_repeated_page_is_not_stored_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let doc = store
            .begin_receive("tokyo", "00ff", None, Some(3))
            .await
            .unwrap();
        assert!(
            store
                .store_page(doc.id, 0, page(1), Resolution::Fine)
                .await
                .unwrap()
        );
        assert!(
            !store
                .store_page(doc.id, 0, page(1), Resolution::Fine)
                .await
                .unwrap()
        );
        let err = store
            .store_page(doc.id, 2, page(3), Resolution::Fine)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("in order"), "{err}");
        // The same job resumes into the same document.
        store
            .finish_receive(doc.id, InboxState::Interrupted, false)
            .await
            .unwrap();
        let again = store
            .begin_receive("tokyo", "00ff", None, Some(3))
            .await
            .unwrap();
        assert_eq!((again.id, again.pages), (doc.id, 1));
        // Another sender with the same job id is another document.
        let other = store
            .begin_receive("kyoto", "00ff", None, None)
            .await
            .unwrap();
        assert_ne!(other.id, doc.id);
        let pages = store.inbox_pages(doc.id).await.unwrap();
        assert_eq!(pages[0].to_bitmap().unwrap(), page(1));
    }

    /// An interrupted document with `pages` pages stored, from `from`.
    async fn interrupted(
        store: &Store,
        from: &str,
        job: &str,
        expected: Option<u32>,
        pages: u32,
    ) -> InboxDoc {
        let doc = store
            .begin_receive(from, job, None, expected)
            .await
            .unwrap();
        for i in 0..pages {
            store
                .store_page(doc.id, i, page(i + 1), Resolution::Fine)
                .await
                .unwrap();
        }
        store
            .finish_receive(doc.id, InboxState::Interrupted, false)
            .await
            .unwrap()
    }

    fn ids(docs: &[InboxDoc]) -> Vec<i64> {
        docs.iter().map(|d| d.id).collect()
    }

    #[tokio::test]
    async fn a_call_open_at_a_crash_prints_its_pages_after_the_restart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A telephone call, two pages confirmed, then the power goes.
        let call = store.begin_receive("pstn", "c1", None, None).await.unwrap();
        for i in 0..2 {
            store
                .store_page(call.id, i, page(i + 1), Resolution::Fine)
                .await
                .unwrap();
        }
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        store.recover().await.unwrap();
        let hour = Duration::from_secs(3600);
        let closed = store.close_abandoned(hour, false).await.unwrap();
        assert_eq!(ids(&closed), vec![call.id]);
        assert_eq!(ids(&store.print_queue().await.unwrap()), vec![call.id]);
        let d = store.inbox_doc(call.id).await.unwrap().unwrap();
        assert_eq!(
            (d.state, d.print, d.pages),
            (InboxState::Partial, PrintState::Pending, 2)
        );
        let noted = store
            .history(Some(format!("inbox:{}", call.id)), 10)
            .await
            .unwrap();
        assert!(
            noted.iter().any(|h| h.message.contains("cannot resume")),
            "{noted:?}"
        );
        // Closed once: the next pass finds nothing.
        assert!(store.close_abandoned(hour, false).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_interrupted_job_waits_for_its_sender_until_the_window_ends() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tagged = interrupted(&store, "tokyo", "00aa", Some(3), 2).await;
        let empty = interrupted(&store, "tokyo", "00bb", Some(3), 0).await;
        let untagged = interrupted(&store, "kyoto", "f00d", None, 1).await;
        let hour = Duration::from_secs(3600);
        // Within the window only what no sender can resume closes.
        let closed = store.close_abandoned(hour, true).await.unwrap();
        assert_eq!(ids(&closed), vec![untagged.id]);
        assert_eq!(
            closed[0].print,
            PrintState::Held,
            "held, as [inbox] print = false asks"
        );
        let d = store.inbox_doc(tagged.id).await.unwrap().unwrap();
        assert_eq!(d.state, InboxState::Interrupted);
        // The window over, the tagged job's pages print; a document
        // without pages has nothing to print and stays.
        let closed = store.close_abandoned(Duration::ZERO, false).await.unwrap();
        assert_eq!(ids(&closed), vec![tagged.id]);
        assert_eq!(
            (closed[0].state, closed[0].print, closed[0].pages),
            (InboxState::Partial, PrintState::Pending, 2)
        );
        let noted = store
            .history(Some(format!("inbox:{}", tagged.id)), 10)
            .await
            .unwrap();
        assert!(
            noted
                .iter()
                .any(|h| h.message.contains("did not resume within 0s")),
            "{noted:?}"
        );
        let e = store.inbox_doc(empty.id).await.unwrap().unwrap();
        assert_eq!(e.state, InboxState::Interrupted);
        // The sender comes back after all: its pages not yet here go to a
        // document of their own, and none prints twice.
        let late = store
            .begin_receive("tokyo", "00aa", None, Some(3))
            .await
            .unwrap();
        assert_ne!(late.id, tagged.id);
        assert_eq!((late.first_page, late.pages), (2, 0));
    }

    #[tokio::test]
    async fn releasing_an_interrupted_document_prints_what_it_has() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let doc = interrupted(&store, "tokyo", "00cc", Some(5), 1).await;
        let d = store.release(doc.id).await.unwrap();
        assert_eq!(
            (d.state, d.print),
            (InboxState::Partial, PrintState::Pending)
        );
        assert_eq!(ids(&store.print_queue().await.unwrap()), vec![doc.id]);
        let receiving = store
            .begin_receive("tokyo", "00dd", None, Some(5))
            .await
            .unwrap();
        store
            .store_page(receiving.id, 0, page(1), Resolution::Fine)
            .await
            .unwrap();
        let err = store.release(receiving.id).await.unwrap_err();
        assert!(err.to_string().contains("not held"), "{err}");
    }

    #[tokio::test]
    async fn held_documents_wait_for_release_and_partial_ones_print_too() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let held = store
            .begin_receive("tokyo", "0001", None, Some(1))
            .await
            .unwrap();
        store
            .store_page(held.id, 0, page(1), Resolution::Fine)
            .await
            .unwrap();
        let d = store
            .finish_receive(held.id, InboxState::Complete, true)
            .await
            .unwrap();
        assert_eq!((d.state, d.print), (InboxState::Complete, PrintState::Held));
        let partial = store
            .begin_receive("tokyo", "0002", None, Some(3))
            .await
            .unwrap();
        store
            .store_page(partial.id, 0, page(2), Resolution::Fine)
            .await
            .unwrap();
        store
            .finish_receive(partial.id, InboxState::Partial, false)
            .await
            .unwrap();
        let open = store
            .begin_receive("tokyo", "0003", None, Some(3))
            .await
            .unwrap();
        store
            .finish_receive(open.id, InboxState::Interrupted, false)
            .await
            .unwrap();
        let queue: Vec<i64> = store
            .print_queue()
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(queue, vec![partial.id], "only the partial document is due");
        assert_eq!(store.held_count().await.unwrap(), 2);
        store.release(held.id).await.unwrap();
        let queue: Vec<i64> = store
            .print_queue()
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(queue, vec![held.id, partial.id]);
        assert!(
            store.release(open.id).await.is_err(),
            "an open document is not held"
        );
        // A finished document is not reopened by a late session.
        let again = store
            .begin_receive("tokyo", "0001", None, Some(1))
            .await
            .unwrap();
        assert_eq!(again.state, InboxState::Complete);
    }

    /// A store written before the [`ADDED_COLUMNS`] existed (the tables
    /// as [`SCHEMA`] makes them, with a document in them) gains the
    /// columns when opened; its document reads as before, the new fields
    /// empty, and they can be written. Opening it again changes nothing.
    #[tokio::test]
    async fn an_old_store_gains_the_new_columns() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join("store.db")).unwrap();
            conn.execute_batch(SCHEMA).unwrap();
            conn.execute(
                "INSERT INTO inbox (from_user, job_id, state, print_state, archived,
                   created, updated)
                 VALUES ('tokyo', 'old-1', 'complete', 'pending', '/a/fax.pdf', 1, 1)",
                [],
            )
            .unwrap();
        }
        for _ in 0..2 {
            let store = Store::open(dir.path()).unwrap();
            let cols: Vec<String> = {
                let inner = store.inner.lock().unwrap();
                let mut st = inner
                    .conn
                    .prepare("SELECT name FROM pragma_table_info('inbox')")
                    .unwrap();
                st.query_map([], |r| r.get(0))
                    .unwrap()
                    .collect::<Result<_, _>>()
                    .unwrap()
            };
            for (table, column, _) in ADDED_COLUMNS {
                assert_eq!(table, "inbox");
                assert!(cols.iter().any(|c| c == column), "{column}: {cols:?}");
            }
            let d = store.inbox_doc(1).await.unwrap().unwrap();
            assert_eq!(d.job_id, "old-1");
            assert_eq!(d.archived.as_deref(), Some("/a/fax.pdf"));
            assert_eq!(store.print_queue().await.unwrap().len(), 1);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            store.inbox_doc(1).await.unwrap().unwrap().archive_error,
            None
        );
        store
            .set_archive_failed(1, "disk full".into())
            .await
            .unwrap();
        let d = store.inbox_doc(1).await.unwrap().unwrap();
        assert_eq!(d.archive_error.as_deref(), Some("disk full"));
        let job = PrinterJob {
            printer: "ipp://printer/ipp/print".into(),
            job_id: 12,
        };
        store.set_submitted(1, job.clone()).await.unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let d = store.inbox_doc(1).await.unwrap().unwrap();
        assert_eq!((d.print, d.printer_job), (PrintState::Submitted, Some(job)));
        assert_eq!(store.print_queue().await.unwrap().len(), 1);
        assert_eq!(store.held_count().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn store_page_refuses_new_pages_for_a_finished_document() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for (job, state) in [
            ("0a01", InboxState::Partial),
            ("0a02", InboxState::Complete),
        ] {
            let doc = store
                .begin_receive("tokyo", job, None, Some(10))
                .await
                .unwrap();
            for i in 0..2 {
                store
                    .store_page(doc.id, i, page(i), Resolution::Fine)
                    .await
                    .unwrap();
            }
            store.finish_receive(doc.id, state, false).await.unwrap();
            // A page it has is still recognised (MCF again, nothing stored).
            assert!(
                !store
                    .store_page(doc.id, 1, page(1), Resolution::Fine)
                    .await
                    .unwrap()
            );
            // A new page would never be printed: refused, naming the document.
            let err = store
                .store_page(doc.id, 2, page(2), Resolution::Fine)
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("inbox document {}", doc.id)), "{err}");
            assert!(err.contains(job), "{err}");
            assert!(err.contains(state.as_str()), "{err}");
            let d = store.inbox_doc(doc.id).await.unwrap().unwrap();
            assert_eq!((d.pages, d.state), (2, state));
        }
    }

    #[tokio::test]
    async fn a_job_that_comes_back_after_a_partial_end_continues_in_a_new_document() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let doc = store
            .begin_receive("tokyo", "0b01", None, Some(5))
            .await
            .unwrap();
        assert_eq!((doc.first_page, doc.job_id.as_str()), (0, "0b01"));
        for i in 0..3 {
            store
                .store_page(doc.id, i, page(i), Resolution::Fine)
                .await
                .unwrap();
        }
        store
            .finish_receive(doc.id, InboxState::Partial, false)
            .await
            .unwrap();
        // The partial document is closed (and printed as it is); the rest of
        // the job goes to a new document that starts at page 4.
        let rest = store
            .begin_receive("tokyo", "0b01", None, Some(5))
            .await
            .unwrap();
        assert_ne!(rest.id, doc.id);
        assert_eq!(
            (
                rest.job_id.as_str(),
                rest.first_page,
                rest.pages,
                rest.pages_expected,
                rest.state
            ),
            ("0b01+3", 3, 0, Some(2), InboxState::Receiving)
        );
        for i in 0..2 {
            assert!(
                store
                    .store_page(rest.id, i, page(3 + i), Resolution::Fine)
                    .await
                    .unwrap()
            );
        }
        store
            .finish_receive(rest.id, InboxState::Complete, false)
            .await
            .unwrap();
        let queue: Vec<i64> = store
            .print_queue()
            .await
            .unwrap()
            .iter()
            .map(|d| d.id)
            .collect();
        assert_eq!(queue, vec![doc.id, rest.id], "every page prints once");
        assert_eq!(store.inbox_pages(doc.id).await.unwrap().len(), 3);
        let pages = store.inbox_pages(rest.id).await.unwrap();
        assert_eq!(pages.len(), 2);
        assert_eq!(pages[0].to_bitmap().unwrap(), page(3));
        // A late session of the job finds the complete continuation.
        let late = store
            .begin_receive("tokyo", "0b01", None, Some(5))
            .await
            .unwrap();
        assert_eq!((late.id, late.state), (rest.id, InboxState::Complete));
    }

    /// A job and its history line are queued together or not at all: a
    /// failed history insert leaves no job behind for the outbox to send
    /// while the user, told of the error, sends it again.
    /// A document offered again under the same key (the hot folder after
    /// a restart) makes one job: the second call stores nothing and
    /// returns the first job, even with other pages.
    #[tokio::test]
    async fn a_job_added_once_under_a_key_is_not_added_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (first, new) = store
            .add_job_once(
                "00112233aabbccdd",
                "osaka",
                "memo.tif",
                vec![page(1), page(2)],
                Resolution::Fine,
            )
            .await
            .unwrap();
        assert!(new);
        assert_eq!(
            (first.id.as_str(), first.pages, first.title.as_str()),
            ("00112233aabbccdd", 2, "memo.tif")
        );
        let stored = std::fs::read(dir.path().join("outbox/00112233aabbccdd/0001.tif")).unwrap();
        let (again, new) = store
            .add_job_once(
                "00112233aabbccdd",
                "kobe",
                "other",
                vec![page(3)],
                Resolution::Fine,
            )
            .await
            .unwrap();
        assert!(!new);
        assert_eq!(
            (again.id.as_str(), again.to.as_str(), again.pages),
            ("00112233aabbccdd", "osaka", 2)
        );
        assert_eq!(store.jobs(10).await.unwrap().len(), 1);
        assert_eq!(
            std::fs::read(dir.path().join("outbox/00112233aabbccdd/0001.tif")).unwrap(),
            stored,
            "the first job's pages were overwritten"
        );
        assert!(!dir.path().join("outbox/00112233aabbccdd/0002.tif").exists());
        for bad in [
            "",
            "00112233AABBCCDD",
            "00112233aabbccd",
            "../../etc/passwd0",
            "00112233aabbccdde",
        ] {
            let err = store
                .add_job_once(bad, "osaka", "t", vec![page(1)], Resolution::Fine)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("no job id"), "{bad}: {err}");
        }
        assert_eq!(store.jobs(10).await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_job_is_queued_with_its_history_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let kept = store
            .add_job("osaka", "kept", vec![page(1)], Resolution::Fine)
            .await
            .unwrap();
        store
            .execute_batch_for_test(
                "CREATE TRIGGER history_full BEFORE INSERT ON history
                 BEGIN SELECT RAISE(ABORT, 'history is full'); END;",
            )
            .await
            .unwrap();
        let err = store
            .add_job("osaka", "t", vec![page(1), page(2)], Resolution::Fine)
            .await
            .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("history") && msg.contains("history is full"),
            "{msg}"
        );
        let jobs = store.jobs(10).await.unwrap();
        assert_eq!(
            jobs.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            vec![kept.id.as_str()],
            "no job without its history line"
        );
        assert_eq!(store.due_jobs(now_ms()).await.unwrap().len(), 1);
        let folders = std::fs::read_dir(dir.path().join("outbox"))
            .unwrap()
            .count();
        assert_eq!(folders, 1, "the failed job's pages are removed");
        // A state change is one transaction with its history line too.
        let err = store
            .set_job_state(&kept.id, JobState::Retrying, Some("x".into()), Some(1))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("history"), "{err:#}");
        let j = store.job(&kept.id).await.unwrap().unwrap();
        assert_eq!(j.state, JobState::Queued);
        // Once the history accepts lines again, both rows go in.
        store
            .execute_batch_for_test("DROP TRIGGER history_full;")
            .await
            .unwrap();
        let job = store
            .add_job("osaka", "t", vec![page(1)], Resolution::Fine)
            .await
            .unwrap();
        let lines = store.history(Some(job.id.clone()), 10).await.unwrap();
        assert_eq!(lines.len(), 1, "{lines:?}");
    }

    #[tokio::test]
    async fn cancel_of_a_waiting_job_is_immediate() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let job = store
            .add_job("osaka", "t", vec![page(1)], Resolution::Standard)
            .await
            .unwrap();
        let j = store.request_cancel(&job.id).await.unwrap();
        assert_eq!(j.state, JobState::Cancelled);
        assert!(store.request_cancel(&job.id).await.is_err());
        assert!(store.due_jobs(now_ms()).await.unwrap().is_empty());
    }
}
