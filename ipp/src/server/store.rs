//! The front's durable state: jobs, documents, output devices and paused
//! sites in SQLite (WAL, synchronous=FULL), document bytes in spool files.
//!
//! A document is written to a temporary file and fsync'd, then renamed
//! into place and recorded in the same transaction that creates or
//! updates its job, before the client gets its answer. A restart loses
//! nothing that was acknowledged; files without a row are removed at open.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension as _, TransactionBehavior, params};

use crate::codes::job_state;

/// A store failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("IPP job store {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A spool file could not be written, synced or renamed.
    #[error("IPP spool {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// One job as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// job-id.
    pub id: i32,
    /// The site's name.
    pub site: String,
    /// job-uuid (`urn:uuid:...`).
    pub uuid: String,
    /// job-state.
    pub state: i32,
    /// job-state-reasons.
    pub reasons: Vec<String>,
    /// job-state-message.
    pub message: String,
    /// job-name.
    pub name: String,
    /// job-originating-user-name.
    pub user: String,
    /// The client's address (seed 000: job-client-addr).
    pub client_addr: String,
    /// The client's port (job-client-port).
    pub client_port: u16,
    /// document-format of the job (of its first document).
    pub format: String,
    /// The job template attributes the client gave, IPP-encoded.
    pub template: Vec<u8>,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds, 0 = not yet.
    pub processing: i64,
    /// Unix seconds, 0 = not yet.
    pub completed: i64,
    /// The output device that acknowledged the job, empty = none.
    pub device: String,
    /// All documents received (Print-Job, or last-document/Close-Job).
    pub closed: bool,
    /// Documents received.
    pub documents: i32,
    /// Total document bytes.
    pub octets: i64,
    /// job-impressions-completed as the agent reported it.
    pub impressions: i32,
    /// Unix seconds of the last operation on the job while it was open
    /// (Create-Job, the start and end of each Send-Document, and steady
    /// progress of a long one): the multiple-operation-time-out runs
    /// from here (RFC 8011 5.4.28), not from `created`.
    pub activity: i64,
    /// Whether `user` was authenticated (HTTP Basic) when the job was
    /// created; then only that user's credentials make its owner.
    pub authenticated: bool,
    /// The device the job was last handed back from (its lease ran out,
    /// or it left), empty = none: while no other device has taken the
    /// job, that device's report takes it again ([`JobStore::reclaim_job`]).
    pub last_device: String,
}

impl JobRow {
    /// Final (completed, canceled or aborted).
    pub fn is_final(&self) -> bool {
        job_state::is_final(self.state)
    }

    /// Waiting for a device to fetch it.
    pub fn is_fetchable(&self) -> bool {
        self.state == job_state::PENDING && self.closed && self.device.is_empty()
    }

    /// The reasons plus one.
    pub fn has_reason(&self, reason: &str) -> bool {
        self.reasons.iter().any(|r| r == reason)
    }
}

/// One document as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocRow {
    /// The job.
    pub job: i32,
    /// document-number, from 1.
    pub number: i32,
    /// document-format.
    pub format: String,
    /// document-name.
    pub name: String,
    /// The spool file.
    pub path: PathBuf,
    /// Its size.
    pub size: i64,
    /// document-state as the agent reported it (3 = pending).
    pub state: i32,
}

/// A registered output device (an agent's printer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    /// output-device-uuid.
    pub uuid: String,
    /// The site.
    pub site: String,
    /// The relay user that registered it.
    pub user: String,
    /// Its printer attributes, IPP-encoded.
    pub attrs: Vec<u8>,
    /// Unix seconds of the registration.
    pub registered: i64,
    /// Detached (deregistered or lease expired).
    pub detached: bool,
}

/// What [`JobStore::cancel_job`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cancel {
    /// No device had acknowledged it: canceled now.
    Canceled(JobRow),
    /// A device holds it: kept processing, with the reason
    /// `processing-to-stop-point`, until its agent reports canceled.
    Stopping(JobRow),
    /// It was already final; nothing changed.
    Final(JobRow),
    /// No such job.
    Gone,
}

/// New job fields (the rest start empty).
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// The site.
    pub site: &'a str,
    /// job-uuid.
    pub uuid: &'a str,
    /// job-name.
    pub name: &'a str,
    /// job-originating-user-name.
    pub user: &'a str,
    /// Whether `user` was authenticated (HTTP Basic).
    pub authenticated: bool,
    /// Client address.
    pub client_addr: &'a str,
    /// Client port.
    pub client_port: u16,
    /// document-format.
    pub format: &'a str,
    /// IPP-encoded job template attributes.
    pub template: &'a [u8],
    /// Unix seconds.
    pub now: i64,
}

/// A document for [`JobStore::add_document`].
#[derive(Debug, Clone, Copy)]
pub struct NewDoc<'a> {
    /// Where it was spooled (written and fsync'd).
    pub temp: &'a Path,
    /// document-format.
    pub format: &'a str,
    /// document-name.
    pub name: &'a str,
    /// Its size in bytes.
    pub size: i64,
}

/// The store. Cheap operations behind one mutex; commits fsync (FULL).
#[derive(Debug)]
pub struct JobStore {
    db: Mutex<Connection>,
    db_path: PathBuf,
    spool: PathBuf,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    site TEXT NOT NULL,
    uuid TEXT NOT NULL,
    state INTEGER NOT NULL,
    reasons TEXT NOT NULL DEFAULT '',
    message TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL,
    user TEXT NOT NULL,
    client_addr TEXT NOT NULL,
    client_port INTEGER NOT NULL,
    format TEXT NOT NULL,
    template BLOB NOT NULL,
    created INTEGER NOT NULL,
    processing INTEGER NOT NULL DEFAULT 0,
    completed INTEGER NOT NULL DEFAULT 0,
    device TEXT NOT NULL DEFAULT '',
    closed INTEGER NOT NULL DEFAULT 0,
    documents INTEGER NOT NULL DEFAULT 0,
    octets INTEGER NOT NULL DEFAULT 0,
    impressions INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_site ON jobs(site, state);
CREATE TABLE IF NOT EXISTS documents (
    job INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    number INTEGER NOT NULL,
    format TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    state INTEGER NOT NULL DEFAULT 3,
    PRIMARY KEY (job, number)
);
CREATE TABLE IF NOT EXISTS devices (
    uuid TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    user TEXT NOT NULL,
    attrs BLOB NOT NULL,
    registered INTEGER NOT NULL,
    detached INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS paused (site TEXT PRIMARY KEY);
";

/// Schema changes after [`SCHEMA`] (which is version 0), in order:
/// entry `i` brings `PRAGMA user_version` from `i` to `i + 1`. Each runs
/// once, in a transaction with its version bump. Never edit an entry;
/// append.
const MIGRATIONS: &[&str] = &[
    // 1: the last operation on a job while it is open, for the
    // multiple-operation-time-out. Existing jobs start from their
    // creation (what the time-out ran from before).
    "ALTER TABLE jobs ADD COLUMN activity INTEGER NOT NULL DEFAULT 0;
     UPDATE jobs SET activity = created;",
    // 2: whether the job's user was authenticated; jobs from before were
    // not (their owner is known by name and address).
    "ALTER TABLE jobs ADD COLUMN authenticated INTEGER NOT NULL DEFAULT 0;",
    // 3: an output device is known within its site, (site, uuid): one
    // site's agent naming another site's UUID must not reach that
    // site's device. SQLite cannot change a primary key in place.
    "CREATE TABLE devices_by_site (
         uuid TEXT NOT NULL,
         site TEXT NOT NULL,
         user TEXT NOT NULL,
         attrs BLOB NOT NULL,
         registered INTEGER NOT NULL,
         detached INTEGER NOT NULL DEFAULT 0,
         PRIMARY KEY (site, uuid)
     );
     INSERT INTO devices_by_site (uuid, site, user, attrs, registered, detached)
         SELECT uuid, site, user, attrs, registered, detached FROM devices
         ORDER BY registered, rowid;
     DROP TABLE devices;
     ALTER TABLE devices_by_site RENAME TO devices;",
    // 4: the device a job was handed back from, so that device's late
    // report can take the job again while no other device has.
    "ALTER TABLE jobs ADD COLUMN last_device TEXT NOT NULL DEFAULT '';",
];

/// Brings the schema up to the newest version.
fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let done = usize::try_from(version).unwrap_or(usize::MAX);
    if done > MIGRATIONS.len() {
        tracing::warn!(
            version,
            known = MIGRATIONS.len(),
            "The IPP job store was written by a newer version; using it as it is."
        );
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
        tx.commit()?;
    }
    Ok(())
}

/// The SET list of a state change: state ?1, reasons ?2 (space
/// separated), message ?3, and the processing and completed times (?4)
/// when the state reaches them. The job is ?5 in every user's WHERE.
const STATE_COLUMNS: &str = "state = ?1, reasons = ?2, message = ?3, \
     processing = CASE WHEN processing = 0 AND ?1 IN (5, 6, 7, 8, 9) THEN ?4 ELSE processing END, \
     completed = CASE WHEN ?1 IN (7, 8, 9) THEN ?4 ELSE completed END";

/// The condition of a job still taking documents (Create-Job done, not
/// closed, still pending: not canceled or aborted meanwhile).
const OPEN: &str = "closed = 0 AND state = 3";

const JOB_COLUMNS: &str = "id, site, uuid, state, reasons, message, name, user, client_addr, \
     client_port, format, template, created, processing, completed, device, closed, documents, \
     octets, impressions, activity, authenticated, last_device";

/// Job `id` read inside `c` (a connection or a transaction).
fn job_in(c: &Connection, id: i32) -> rusqlite::Result<Option<JobRow>> {
    c.query_row(
        &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"),
        params![id],
        job_from_row,
    )
    .optional()
}

fn job_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    let reasons: String = r.get(4)?;
    Ok(JobRow {
        id: r.get(0)?,
        site: r.get(1)?,
        uuid: r.get(2)?,
        state: r.get(3)?,
        reasons: reasons.split_whitespace().map(str::to_owned).collect(),
        message: r.get(5)?,
        name: r.get(6)?,
        user: r.get(7)?,
        client_addr: r.get(8)?,
        client_port: r.get(9)?,
        format: r.get(10)?,
        template: r.get(11)?,
        created: r.get(12)?,
        processing: r.get(13)?,
        completed: r.get(14)?,
        device: r.get(15)?,
        closed: r.get(16)?,
        documents: r.get(17)?,
        octets: r.get(18)?,
        impressions: r.get(19)?,
        activity: r.get(20)?,
        authenticated: r.get(21)?,
        last_device: r.get(22)?,
    })
}

fn device_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeviceRow> {
    Ok(DeviceRow {
        uuid: r.get(0)?,
        site: r.get(1)?,
        user: r.get(2)?,
        attrs: r.get(3)?,
        registered: r.get(4)?,
        detached: r.get(5)?,
    })
}

fn doc_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DocRow> {
    let path: String = r.get(4)?;
    Ok(DocRow {
        job: r.get(0)?,
        number: r.get(1)?,
        format: r.get(2)?,
        name: r.get(3)?,
        path: PathBuf::from(path),
        size: r.get(5)?,
        state: r.get(6)?,
    })
}

/// Renames a spooled document to its final name and makes the rename
/// durable (fsync of the spool folder) before the caller commits the row
/// that names it: a row committed is a file that survives a power loss,
/// and a failed fsync rolls the row back, so the client is never told of
/// a failure for a job that would still print. (A rename that survives
/// without its row is an orphan that [`JobStore::open`] removes.)
fn rename_durably(from: &Path, to: &Path) -> rusqlite::Result<()> {
    let sql = |e: std::io::Error| rusqlite::Error::ToSqlConversionFailure(Box::new(e));
    std::fs::rename(from, to).map_err(sql)?;
    let dir = to.parent().unwrap_or(Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(sql)
}

impl JobStore {
    /// Opens (creating) `dir/ipp.db` and `dir/spool/`, and removes spool
    /// files no document row refers to (a crash between the file and
    /// its row).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let spool = dir.join("spool");
        std::fs::create_dir_all(&spool).map_err(|source| StoreError::Io {
            path: spool.clone(),
            source,
        })?;
        let db_path = dir.join("ipp.db");
        let db_err = |source| StoreError::Db {
            path: db_path.clone(),
            source,
        };
        let mut conn = Connection::open(&db_path).map_err(db_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
        )
        .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
        migrate(&mut conn).map_err(db_err)?;
        let store = Self {
            db: Mutex::new(conn),
            db_path,
            spool,
        };
        store.remove_orphans()?;
        Ok(store)
    }

    /// Where documents are spooled.
    pub fn spool_dir(&self) -> &Path {
        &self.spool
    }

    fn db_err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Db {
            path: self.db_path.clone(),
            source,
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut conn = match self.db.lock() {
            Ok(c) => c,
            // A panic while holding the lock left no half transaction:
            // SQLite rolled it back. Go on with the connection.
            Err(poisoned) => poisoned.into_inner(),
        };
        f(&mut conn).map_err(|e| self.db_err(e))
    }

    fn remove_orphans(&self) -> Result<(), StoreError> {
        let known: std::collections::HashSet<PathBuf> = self.with(|c| {
            let mut st = c.prepare("SELECT path FROM documents")?;
            let rows = st.query_map([], |r| r.get::<_, String>(0))?;
            rows.map(|r| r.map(PathBuf::from)).collect()
        })?;
        let entries = std::fs::read_dir(&self.spool).map_err(|source| StoreError::Io {
            path: self.spool.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if !known.contains(&path) {
                tracing::info!(path = %path.display(), "Removing a spool file no job refers to.");
                let _ = std::fs::remove_file(&path);
            }
        }
        Ok(())
    }

    /// A fresh temporary spool path for an incoming document.
    pub fn temp_path(&self) -> PathBuf {
        self.spool
            .join(format!("incoming-{:016x}.tmp", rand::random::<u64>()))
    }

    /// Creates a job. With `doc`, the document (already written and
    /// fsync'd at `doc.0`) is moved into the spool and recorded in the
    /// same transaction, and the job is closed (Print-Job).
    pub fn create_job(
        &self,
        job: &NewJob<'_>,
        state: i32,
        reasons: &[&str],
        doc: Option<(&Path, &str, i64)>,
    ) -> Result<JobRow, StoreError> {
        let id = self.with(|c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO jobs (site, uuid, state, reasons, name, user, client_addr, \
                 client_port, format, template, created, activity, authenticated) \
                 VALUES (?1,?2,?3,?4,?5,?6,?7,?8,?9,?10,?11,?11,?12)",
                params![
                    job.site,
                    job.uuid,
                    state,
                    reasons.join(" "),
                    job.name,
                    job.user,
                    job.client_addr,
                    job.client_port,
                    job.format,
                    job.template,
                    job.now,
                    job.authenticated
                ],
            )?;
            let id = tx.last_insert_rowid() as i32;
            if let Some((temp, name, size)) = doc {
                let path = self.spool.join(format!("job-{id}-doc-1"));
                rename_durably(temp, &path)?;
                tx.execute(
                    "INSERT INTO documents (job, number, format, name, path, size) \
                     VALUES (?,1,?,?,?,?)",
                    params![id, job.format, name, path.to_string_lossy(), size],
                )?;
                tx.execute(
                    "UPDATE jobs SET closed = 1, documents = 1, octets = ? WHERE id = ?",
                    params![size, id],
                )?;
            }
            tx.commit()?;
            Ok(id)
        })?;
        self.job(id)?
            .ok_or_else(|| self.db_err(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Adds a document (spooled and fsync'd at `doc.temp`) to a job still
    /// taking documents (Send-Document). `last` (the reasons and message
    /// of a job waiting for its device) closes the job too. The check that
    /// the job is open and the write are one compare-and-set, so no
    /// document lands on a job that was closed, canceled or aborted while
    /// the document was arriving: then this returns None, changes nothing
    /// and removes the spooled file.
    pub fn add_document(
        &self,
        id: i32,
        doc: &NewDoc<'_>,
        last: Option<(&[String], &str)>,
        now: i64,
    ) -> Result<Option<JobRow>, StoreError> {
        // The spool path the file was renamed to, until its row commits.
        let mut renamed: Option<PathBuf> = None;
        let added = self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let n = match last {
                None => tx.execute(
                    &format!(
                        "UPDATE jobs SET documents = documents + 1, octets = octets + ?1, \
                         activity = MAX(activity, ?2) WHERE id = ?3 AND {OPEN}"
                    ),
                    params![doc.size, now, id],
                )?,
                Some((reasons, message)) => tx.execute(
                    &format!(
                        "UPDATE jobs SET documents = documents + 1, octets = octets + ?1, \
                         activity = MAX(activity, ?2), closed = 1, reasons = ?4, message = ?5 \
                         WHERE id = ?3 AND {OPEN}"
                    ),
                    params![doc.size, now, id, reasons.join(" "), message],
                )?,
            };
            if n == 0 {
                return Ok(false);
            }
            let number: i32 = tx.query_row(
                "SELECT documents FROM jobs WHERE id = ?",
                params![id],
                |r| r.get(0),
            )?;
            let path = self.spool.join(format!("job-{id}-doc-{number}"));
            renamed = Some(path.clone());
            rename_durably(doc.temp, &path)?;
            tx.execute(
                "INSERT INTO documents (job, number, format, name, path, size) VALUES (?,?,?,?,?,?)",
                params![id, number, doc.format, doc.name, path.to_string_lossy(), doc.size],
            )?;
            tx.commit()?;
            Ok(true)
        });
        match added {
            Ok(true) => {}
            Ok(false) => {
                let _ = std::fs::remove_file(doc.temp);
                return Ok(None);
            }
            Err(e) => {
                let _ = std::fs::remove_file(renamed.as_deref().unwrap_or(doc.temp));
                return Err(e);
            }
        }
        self.job(id)
    }

    /// Closes a job still taking documents without a further document
    /// (Close-Job, or Send-Document with last-document and no data), with
    /// the reasons and message of a job waiting for its device. A
    /// compare-and-set: false, and nothing changed, when the job was no
    /// longer open (closed, canceled or aborted meanwhile).
    pub fn close_job(
        &self,
        id: i32,
        reasons: &[String],
        message: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                &format!(
                    "UPDATE jobs SET closed = 1, reasons = ?1, message = ?2, \
                     activity = MAX(activity, ?3) WHERE id = ?4 AND {OPEN}"
                ),
                params![reasons.join(" "), message, now, id],
            )
        })
        .map(|n| n > 0)
    }

    /// Records an operation on a job still taking documents (the start,
    /// steady progress and end of a Send-Document): its
    /// multiple-operation-time-out starts again. False when the job is no
    /// longer open.
    pub fn touch_job(&self, id: i32, now: i64) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                &format!("UPDATE jobs SET activity = MAX(activity, ?1) WHERE id = ?2 AND {OPEN}"),
                params![now, id],
            )
        })
        .map(|n| n > 0)
    }

    /// The multiple-operation-time-out: the jobs of `site` still open
    /// whose last operation was before `cutoff` are closed when they have
    /// a document, and aborted (`aborted-by-system`, `message`) when they
    /// have none. One transaction, so a Send-Document that refreshed a job
    /// first keeps it open, and one that comes after finds it ended.
    /// Returns the ended jobs as they are now.
    pub fn expire_idle_jobs(
        &self,
        site: &str,
        cutoff: i64,
        message: &str,
        now: i64,
    ) -> Result<Vec<JobRow>, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let idle: Vec<(i32, i32)> = {
                let mut st = tx.prepare(
                    "SELECT id, documents FROM jobs WHERE site = ? AND closed = 0 \
                     AND state NOT IN (7, 8, 9) AND activity < ? ORDER BY id",
                )?;
                let rows = st.query_map(params![site, cutoff], |r| {
                    Ok((r.get::<_, i32>(0)?, r.get::<_, i32>(1)?))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut ended = Vec::with_capacity(idle.len());
            for (id, documents) in idle {
                if documents > 0 {
                    // Closed as if its last document had said so: from
                    // job-incoming to fetchable.
                    tx.execute(
                        "UPDATE jobs SET closed = 1, reasons = 'job-fetchable' WHERE id = ?",
                        params![id],
                    )?;
                } else {
                    tx.execute(
                        &format!("UPDATE jobs SET {STATE_COLUMNS} WHERE id = ?5"),
                        params![job_state::ABORTED, "aborted-by-system", message, now, id],
                    )?;
                }
                ended.push(job_in(&tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?);
            }
            tx.commit()?;
            Ok(ended)
        })
    }

    /// Acknowledge-Job: gives a fetchable job to `device`, processing with
    /// the reason `job-fetched` and `message`. A compare-and-set on the job
    /// still being fetchable (pending, closed, no device): false, and
    /// nothing changed, when it is not (a Cancel-Job or another device
    /// came first).
    pub fn acknowledge_job(
        &self,
        id: i32,
        device: &str,
        message: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.take_job(id, device, message, now, "")
    }

    /// A late report from the device a job was handed back from (its lease
    /// ran out while it was printing, and it comes back): the job is that
    /// device's again, processing with `job-fetched` and `message`. A
    /// compare-and-set on the job still waiting, untaken, with `device` as
    /// its last holder: false, and nothing changed, when another device
    /// acknowledged it, it was canceled, or it ended meanwhile.
    pub fn reclaim_job(
        &self,
        id: i32,
        device: &str,
        message: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.take_job(id, device, message, now, "AND last_device = ?6")
    }

    /// Gives a waiting, untaken, closed job to `device` (processing,
    /// `job-fetched`, `message`) when it also meets `also` (SQL over the
    /// same parameters: ?5 the job, ?6 the device); false, and nothing
    /// changed, otherwise.
    fn take_job(
        &self,
        id: i32,
        device: &str,
        message: &str,
        now: i64,
        also: &str,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                &format!(
                    "UPDATE jobs SET {STATE_COLUMNS}, device = ?6 WHERE id = ?5 \
                     AND device = '' {also} AND state = 3 AND closed = 1"
                ),
                params![
                    job_state::PROCESSING,
                    "job-fetched",
                    message,
                    now,
                    id,
                    device
                ],
            )
        })
        .map(|n| n > 0)
    }

    /// Cancel-Job, atomic against a device acknowledging the job at the
    /// same moment. A job no device holds is canceled
    /// (`job-canceled-by-user`, `canceled_message`). A job a device holds
    /// stays processing, with `processing-to-stop-point` added and
    /// `stopping_message`, until its agent stops it and reports. A final
    /// job is left as it is.
    pub fn cancel_job(
        &self,
        id: i32,
        canceled_message: &str,
        stopping_message: &str,
        now: i64,
    ) -> Result<Cancel, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let canceled = tx.execute(
                &format!(
                    "UPDATE jobs SET {STATE_COLUMNS} WHERE id = ?5 AND device = '' \
                     AND state NOT IN (7, 8, 9)"
                ),
                params![
                    job_state::CANCELED,
                    "job-canceled-by-user",
                    canceled_message,
                    now,
                    id
                ],
            )?;
            let outcome = match job_in(&tx, id)? {
                None => Cancel::Gone,
                Some(j) if canceled > 0 => Cancel::Canceled(j),
                // Not canceled above, so final or held by a device (the
                // transaction keeps anything else from happening between).
                Some(j) if j.is_final() || j.device.is_empty() => Cancel::Final(j),
                Some(j) => {
                    let mut reasons = j.reasons.clone();
                    if !j.has_reason("processing-to-stop-point") {
                        reasons.push("processing-to-stop-point".to_owned());
                    }
                    tx.execute(
                        &format!(
                            "UPDATE jobs SET {STATE_COLUMNS} WHERE id = ?5 AND device = ?6 \
                             AND state NOT IN (7, 8, 9)"
                        ),
                        params![
                            job_state::PROCESSING,
                            reasons.join(" "),
                            stopping_message,
                            now,
                            id,
                            j.device
                        ],
                    )?;
                    match job_in(&tx, id)? {
                        Some(j) => Cancel::Stopping(j),
                        None => Cancel::Gone,
                    }
                }
            };
            tx.commit()?;
            Ok(outcome)
        })
    }

    /// Release-Job: a held job is pending again, with `reasons` and
    /// `message`. A compare-and-set on the job still being held: false,
    /// and nothing changed, when it is not (canceled or released
    /// meanwhile).
    pub fn release_job(
        &self,
        id: i32,
        reasons: &[String],
        message: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                &format!("UPDATE jobs SET {STATE_COLUMNS} WHERE id = ?5 AND state = 4"),
                params![job_state::PENDING, reasons.join(" "), message, now, id],
            )
        })
        .map(|n| n > 0)
    }

    /// Ends a job still waiting for a device (pending, closed, no device)
    /// after a failed wake-up: `state` (aborted, or held) with `reasons`
    /// and `message`. A compare-and-set: false, and nothing changed, when
    /// the job is no longer waiting (canceled or fetched meanwhile).
    pub fn end_waiting_job(
        &self,
        id: i32,
        state: i32,
        reasons: &[String],
        message: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                &format!(
                    "UPDATE jobs SET {STATE_COLUMNS} WHERE id = ?5 AND device = '' \
                     AND state = 3 AND closed = 1"
                ),
                params![state, reasons.join(" "), message, now, id],
            )
        })
        .map(|n| n > 0)
    }

    /// Sets the reasons and message of every job of `site` waiting for a
    /// device (pending, all documents in, no device): Pause-Printer and
    /// Resume-Printer. One transaction, so a job a device acknowledges or
    /// a client cancels at the same moment keeps what that did. Returns the
    /// jobs changed, as they are now.
    pub fn set_waiting_reasons(
        &self,
        site: &str,
        reasons: &[String],
        message: &str,
        now: i64,
    ) -> Result<Vec<JobRow>, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let ids: Vec<i32> = {
                let mut st = tx.prepare(
                    "SELECT id FROM jobs WHERE site = ? AND state = 3 AND closed = 1 \
                     AND device = '' ORDER BY id",
                )?;
                let rows = st.query_map(params![site], |r| r.get(0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut changed = Vec::with_capacity(ids.len());
            for id in ids {
                tx.execute(
                    &format!("UPDATE jobs SET {STATE_COLUMNS} WHERE id = ?5"),
                    params![job_state::PENDING, reasons.join(" "), message, now, id],
                )?;
                changed.push(job_in(&tx, id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?);
            }
            tx.commit()?;
            Ok(changed)
        })
    }

    /// Sets the job-state-message of a job that is still pending (what
    /// the wake-up is doing, or nothing once a device is attached). A
    /// compare-and-set: false, and nothing changed, when it is not pending
    /// any more (a job canceled or fetched meanwhile keeps its state).
    pub fn set_pending_message(&self, id: i32, message: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET message = ?1 WHERE id = ?2 AND state = 3",
                params![message, id],
            )
        })
        .map(|n| n > 0)
    }

    /// Hands back the unfinished jobs of `site` a device that is gone
    /// holds (a UUID names a device within its site only), in one
    /// transaction with reading them, so a Cancel-Job or a state report at
    /// the same moment is not lost: a job with a cancel waiting for the
    /// device (`processing-to-stop-point`) is canceled
    /// (`job-canceled-by-user`, `canceled_message`), any other is offered
    /// again (pending, `job-fetchable`, `offered_message`). Returns the
    /// jobs changed, as they are now.
    pub fn hand_back(
        &self,
        site: &str,
        device: &str,
        canceled_message: &str,
        offered_message: &str,
        now: i64,
    ) -> Result<Vec<JobRow>, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let held: Vec<JobRow> = {
                let mut st = tx.prepare(&format!(
                    "SELECT {JOB_COLUMNS} FROM jobs WHERE site = ? AND device = ? \
                     AND state NOT IN (7, 8, 9) ORDER BY id"
                ))?;
                let rows = st.query_map(params![site, device], job_from_row)?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut changed = Vec::with_capacity(held.len());
            for j in held {
                let (state, reason, message) = if j.has_reason("processing-to-stop-point") {
                    (
                        job_state::CANCELED,
                        "job-canceled-by-user",
                        canceled_message,
                    )
                } else {
                    (job_state::PENDING, "job-fetchable", offered_message)
                };
                tx.execute(
                    &format!(
                        "UPDATE jobs SET {STATE_COLUMNS}, device = '', last_device = ?6 \
                         WHERE id = ?5 AND device = ?6 AND state NOT IN (7, 8, 9)"
                    ),
                    params![state, reason, message, now, j.id, device],
                )?;
                changed.push(job_in(&tx, j.id)?.ok_or(rusqlite::Error::QueryReturnedNoRows)?);
            }
            tx.commit()?;
            Ok(changed)
        })
    }

    /// Update-Job-Status from the device that holds the job: its state,
    /// reasons and message (None: a final state gets none, any other
    /// keeps the current one), and impressions when given. Read and
    /// written in one transaction, so a job that ended or was handed back
    /// meanwhile is left alone, and `processing-to-stop-point` (a
    /// Cancel-Job waiting for the device, maybe one that came just now)
    /// stays while the job is not final. None, and nothing changed, when
    /// the job is gone, final, or not held by `device`.
    #[allow(clippy::too_many_arguments)]
    pub fn report_job_state(
        &self,
        id: i32,
        device: &str,
        state: i32,
        reasons: &[String],
        message: Option<&str>,
        impressions: Option<i32>,
        now: i64,
    ) -> Result<Option<JobRow>, StoreError> {
        self.with(|c| {
            let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let Some(job) = job_in(&tx, id)? else {
                return Ok(None);
            };
            if job.is_final() || job.device != device {
                return Ok(None);
            }
            let ends = job_state::is_final(state);
            let mut reasons = reasons.to_vec();
            if !ends
                && job.has_reason("processing-to-stop-point")
                && !reasons.iter().any(|r| r == "processing-to-stop-point")
            {
                reasons.push("processing-to-stop-point".to_owned());
            }
            let message = message.unwrap_or(if ends { "" } else { job.message.as_str() });
            tx.execute(
                &format!(
                    "UPDATE jobs SET {STATE_COLUMNS}, impressions = COALESCE(?6, impressions) \
                     WHERE id = ?5 AND device = ?7 AND state NOT IN (7, 8, 9)"
                ),
                params![
                    state,
                    reasons.join(" "),
                    message,
                    now,
                    id,
                    impressions,
                    device
                ],
            )?;
            let row = job_in(&tx, id)?;
            tx.commit()?;
            Ok(row)
        })
    }

    /// One job.
    pub fn job(&self, id: i32) -> Result<Option<JobRow>, StoreError> {
        self.with(|c| job_in(c, id))
    }

    /// A site's jobs not yet ended (older than job `before`, if given),
    /// and the bytes of their documents: counted in the database, for
    /// the quota checks and queue positions, without loading any job.
    pub fn active(&self, site: &str, before: Option<i32>) -> Result<(usize, u64), StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(octets), 0) FROM jobs \
                 WHERE site = ?1 AND state NOT IN (7, 8, 9) AND id < ?2",
                params![site, before.unwrap_or(i32::MAX)],
                |r| Ok((r.get::<_, i64>(0)? as usize, r.get::<_, i64>(1)? as u64)),
            )
        })
    }

    /// The jobs of a site, oldest first (`finished`: None = all,
    /// Some(true) = final only, Some(false) = not final only).
    pub fn jobs(&self, site: &str, finished: Option<bool>) -> Result<Vec<JobRow>, StoreError> {
        let filter = match finished {
            None => "",
            Some(true) => "AND state IN (7, 8, 9)",
            Some(false) => "AND state NOT IN (7, 8, 9)",
        };
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE site = ? {filter} ORDER BY id"
            ))?;
            let rows = st.query_map(params![site], job_from_row)?;
            rows.collect()
        })
    }

    /// Sets state, reasons and message (and the processing/completed
    /// times when the state reaches them).
    pub fn set_state(
        &self,
        id: i32,
        state: i32,
        reasons: &[String],
        message: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                &format!("UPDATE jobs SET {STATE_COLUMNS} WHERE id = ?5"),
                params![state, reasons.join(" "), message, now, id],
            )
        })
        .map(drop)
    }

    /// Records the device that acknowledged the job ("" hands it back).
    pub fn set_device(&self, id: i32, device: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET device = ? WHERE id = ?",
                params![device, id],
            )
        })
        .map(drop)
    }

    /// Records impressions completed.
    pub fn set_impressions(&self, id: i32, impressions: i32) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE jobs SET impressions = ? WHERE id = ?",
                params![impressions, id],
            )
        })
        .map(drop)
    }

    /// The documents of a job, in order.
    pub fn documents(&self, id: i32) -> Result<Vec<DocRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT job, number, format, name, path, size, state FROM documents \
                 WHERE job = ? ORDER BY number",
            )?;
            let rows = st.query_map(params![id], doc_from_row)?;
            rows.collect()
        })
    }

    /// Sets a document's state.
    pub fn set_document_state(&self, id: i32, number: i32, state: i32) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE documents SET state = ? WHERE job = ? AND number = ?",
                params![state, id, number],
            )
        })
        .map(drop)
    }

    /// Removes the spool files of finished jobs older than `before`, and
    /// their rows. Returns how many jobs were purged.
    pub fn purge_finished(&self, before: i64) -> Result<usize, StoreError> {
        let docs: Vec<PathBuf> = self.with(|c| {
            let mut st = c.prepare(
                "SELECT d.path FROM documents d JOIN jobs j ON j.id = d.job \
                 WHERE j.state IN (7, 8, 9) AND j.completed < ?",
            )?;
            let rows = st.query_map(params![before], |r| r.get::<_, String>(0))?;
            rows.map(|r| r.map(PathBuf::from)).collect()
        })?;
        let n = self.with(|c| {
            c.execute(
                "DELETE FROM jobs WHERE state IN (7, 8, 9) AND completed < ?",
                params![before],
            )
        })?;
        for p in docs {
            let _ = std::fs::remove_file(p);
        }
        Ok(n)
    }

    /// Registers or updates the device `uuid` of `site`.
    pub fn upsert_device(
        &self,
        uuid: &str,
        site: &str,
        user: &str,
        attrs: &[u8],
        now: i64,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO devices (uuid, site, user, attrs, registered, detached) \
                 VALUES (?,?,?,?,?,0) ON CONFLICT(site, uuid) DO UPDATE SET \
                 attrs = excluded.attrs, user = excluded.user, detached = 0",
                params![uuid, site, user, attrs, now],
            )
        })
        .map(drop)
    }

    /// Marks the device `uuid` of `site` detached.
    pub fn detach_device(&self, site: &str, uuid: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE devices SET detached = 1 WHERE site = ? AND uuid = ?",
                params![site, uuid],
            )
        })
        .map(drop)
    }

    /// Another site than `site` where a user other than `user` registered
    /// the device `uuid`, if any: that UUID is not this agent's to use.
    /// (One agent user serving two sites may register the same printer,
    /// under the same UUID, in both.)
    pub fn device_of_another(
        &self,
        uuid: &str,
        site: &str,
        user: &str,
    ) -> Result<Option<String>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT site FROM devices WHERE uuid = ? AND site != ? AND user != ? \
                 ORDER BY registered DESC LIMIT 1",
                params![uuid, site, user],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// The device `uuid` of `site`, attached or not.
    pub fn device(&self, site: &str, uuid: &str) -> Result<Option<DeviceRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT uuid, site, user, attrs, registered, detached FROM devices \
                 WHERE site = ? AND uuid = ?",
                params![site, uuid],
                device_from_row,
            )
            .optional()
        })
    }

    /// The devices of a site, newest registration last.
    pub fn devices(&self, site: &str) -> Result<Vec<DeviceRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT uuid, site, user, attrs, registered, detached FROM devices \
                 WHERE site = ? ORDER BY registered, rowid",
            )?;
            let rows = st.query_map(params![site], device_from_row)?;
            rows.collect()
        })
    }

    /// Jobs of `site` the device `uuid` acknowledged that are not final:
    /// the ones to offer again when the device is gone.
    pub fn unfinished_of_device(&self, site: &str, uuid: &str) -> Result<Vec<JobRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE site = ? AND device = ? \
                 AND state NOT IN (7, 8, 9) ORDER BY id"
            ))?;
            let rows = st.query_map(params![site, uuid], job_from_row)?;
            rows.collect()
        })
    }

    /// Pauses or resumes a site (Pause-Printer / Resume-Printer).
    pub fn set_paused(&self, site: &str, paused: bool) -> Result<(), StoreError> {
        self.with(|c| {
            if paused {
                c.execute(
                    "INSERT OR IGNORE INTO paused (site) VALUES (?)",
                    params![site],
                )
            } else {
                c.execute("DELETE FROM paused WHERE site = ?", params![site])
            }
        })
        .map(drop)
    }

    /// Whether a site is paused.
    pub fn is_paused(&self, site: &str) -> Result<bool, StoreError> {
        self.with(|c| {
            c.query_row("SELECT 1 FROM paused WHERE site = ?", params![site], |_| {
                Ok(())
            })
            .optional()
            .map(|r| r.is_some())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_job<'a>(site: &'a str) -> NewJob<'a> {
        NewJob {
            site,
            uuid: "urn:uuid:1",
            name: "doc",
            user: "alice",
            authenticated: false,
            client_addr: "192.0.2.1",
            client_port: 40000,
            format: "application/pdf",
            template: b"",
            now: 1000,
        }
    }

    const NONE: &[String] = &[];

    fn doc(temp: &Path, size: i64) -> NewDoc<'_> {
        NewDoc {
            temp,
            format: "application/pdf",
            name: "d",
            size,
        }
    }

    /// A closed job with one document, waiting for a device.
    fn fetchable_job(store: &JobStore) -> JobRow {
        let temp = store.temp_path();
        std::fs::write(&temp, b"%PDF").unwrap();
        let job = store
            .create_job(&new_job("a"), 3, &["job-fetchable"], Some((&temp, "d", 4)))
            .unwrap();
        assert!(job.is_fetchable());
        job
    }

    #[test]
    fn a_job_with_its_document_survives_reopening_and_orphans_go() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let store = JobStore::open(dir.path()).unwrap();
            let temp = store.temp_path();
            std::fs::write(&temp, b"%PDF-1.4 hello").unwrap();
            let job = store
                .create_job(
                    &new_job("a"),
                    3,
                    &["job-incoming"],
                    Some((&temp, "doc", 14)),
                )
                .unwrap();
            assert!(job.closed && job.is_fetchable());
            std::fs::write(store.temp_path(), b"half").unwrap();
            job.id
        };
        let store = JobStore::open(dir.path()).unwrap();
        let job = store.job(id).unwrap().unwrap();
        assert_eq!((job.documents, job.octets), (1, 14));
        let docs = store.documents(id).unwrap();
        assert_eq!(std::fs::read(&docs[0].path).unwrap(), b"%PDF-1.4 hello");
        let files: Vec<_> = std::fs::read_dir(store.spool_dir()).unwrap().collect();
        assert_eq!(files.len(), 1, "the half-written temp file is removed");
    }

    #[test]
    fn states_times_devices_and_purge() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        let job = store.create_job(&new_job("a"), 3, &[], None).unwrap();
        assert!(!job.is_fetchable(), "not closed yet");
        let temp = store.temp_path();
        std::fs::write(&temp, b"x").unwrap();
        let job = store
            .add_document(job.id, &doc(&temp, 1), Some((NONE, "")), 1001)
            .unwrap()
            .unwrap();
        assert!(job.is_fetchable());
        store.set_device(job.id, "urn:uuid:dev").unwrap();
        store
            .set_state(job.id, 5, &["job-printing".into()], "", 1010)
            .unwrap();
        assert_eq!(
            store
                .unfinished_of_device("a", "urn:uuid:dev")
                .unwrap()
                .len(),
            1
        );
        store
            .set_state(job.id, 9, &["job-completed-successfully".into()], "", 1020)
            .unwrap();
        let j = store.job(job.id).unwrap().unwrap();
        assert_eq!((j.processing, j.completed), (1010, 1020));
        assert!(
            store
                .unfinished_of_device("a", "urn:uuid:dev")
                .unwrap()
                .is_empty()
        );
        assert_eq!(store.purge_finished(1021).unwrap(), 1);
        assert!(store.job(job.id).unwrap().is_none());
        store.set_paused("a", true).unwrap();
        assert!(store.is_paused("a").unwrap());
        store.set_paused("a", false).unwrap();
        assert!(!store.is_paused("a").unwrap());
    }

    /// A Cancel-Job and an Acknowledge-Job on the same job: whichever the
    /// store takes first wins, and the other sees it.
    #[test]
    fn acknowledge_and_cancel_are_compare_and_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();

        // The cancel first: the agent's acknowledgement is refused and the
        // job stays canceled (it was: processing and printed).
        let job = fetchable_job(&store);
        let Cancel::Canceled(j) = store
            .cancel_job(job.id, "canceled", "stopping", 1010)
            .unwrap()
        else {
            panic!("a job no device holds is canceled at once");
        };
        assert_eq!(j.state, job_state::CANCELED);
        assert!(
            !store
                .acknowledge_job(job.id, "urn:uuid:dev", "fetched", 1011)
                .unwrap(),
            "a canceled job cannot be acknowledged"
        );
        let j = store.job(job.id).unwrap().unwrap();
        assert_eq!(j.state, job_state::CANCELED);
        assert_eq!(j.reasons, ["job-canceled-by-user"]);
        assert_eq!((j.device.as_str(), j.completed), ("", 1010));
        assert!(
            store
                .unfinished_of_device("a", "urn:uuid:dev")
                .unwrap()
                .is_empty()
        );

        // The acknowledgement first: the cancel goes to the device, which
        // must stop the job and report (it was: canceled while printing).
        let job = fetchable_job(&store);
        assert!(
            store
                .acknowledge_job(job.id, "urn:uuid:dev", "fetched", 1020)
                .unwrap()
        );
        let j = store.job(job.id).unwrap().unwrap();
        assert_eq!(
            (j.state, j.device.as_str(), j.processing),
            (job_state::PROCESSING, "urn:uuid:dev", 1020)
        );
        assert_eq!(j.reasons, ["job-fetched"]);
        // Nobody else can take it now, not even the same device again
        // (the front answers that one from the row).
        assert!(
            !store
                .acknowledge_job(job.id, "urn:uuid:other", "fetched", 1021)
                .unwrap()
        );
        let Cancel::Stopping(j) = store
            .cancel_job(job.id, "canceled", "stopping", 1022)
            .unwrap()
        else {
            panic!("a job a device holds waits for the device to stop it");
        };
        assert_eq!(j.state, job_state::PROCESSING);
        assert_eq!(j.device, "urn:uuid:dev");
        assert_eq!(j.reasons, ["job-fetched", "processing-to-stop-point"]);
        assert_eq!(j.message, "stopping");
        // Asking twice adds the reason once.
        let Cancel::Stopping(j) = store
            .cancel_job(job.id, "canceled", "stopping", 1023)
            .unwrap()
        else {
            panic!("still stopping");
        };
        assert_eq!(j.reasons, ["job-fetched", "processing-to-stop-point"]);

        // A final job is left alone; a missing one is gone.
        store
            .set_state(
                job.id,
                job_state::CANCELED,
                &["job-canceled-by-user".into()],
                "",
                1030,
            )
            .unwrap();
        assert!(matches!(
            store.cancel_job(job.id, "canceled", "stopping", 1031).unwrap(),
            Cancel::Final(j) if j.state == job_state::CANCELED && j.completed == 1030
        ));
        assert_eq!(
            store
                .cancel_job(9999, "canceled", "stopping", 1032)
                .unwrap(),
            Cancel::Gone
        );
    }

    /// A job canceled between the front's read and its write stays
    /// canceled: Release-Job, the wake-up notes and the wake-up's end do
    /// not bring it back, a device that leaves does not lose the cancel,
    /// and a progress report keeps it.
    #[test]
    fn release_wake_hand_back_and_reports_are_compare_and_set() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        let reasons = |r: &str| vec![r.to_owned()];

        // Held, then canceled: Release-Job is refused.
        let held = fetchable_job(&store);
        store
            .set_state(
                held.id,
                4,
                &reasons("job-hold-until-specified"),
                "held",
                1001,
            )
            .unwrap();
        assert!(matches!(
            store
                .cancel_job(held.id, "canceled", "stopping", 1002)
                .unwrap(),
            Cancel::Canceled(_)
        ));
        assert!(
            !store
                .release_job(held.id, &reasons("job-fetchable"), "released", 1003)
                .unwrap(),
            "a canceled job cannot be released"
        );
        assert_eq!(
            store.job(held.id).unwrap().unwrap().state,
            job_state::CANCELED
        );
        // A held job is released once.
        let again = fetchable_job(&store);
        store
            .set_state(
                again.id,
                4,
                &reasons("job-hold-until-specified"),
                "held",
                1004,
            )
            .unwrap();
        assert!(
            store
                .release_job(again.id, &reasons("job-fetchable"), "released", 1005)
                .unwrap()
        );
        let j = store.job(again.id).unwrap().unwrap();
        assert!(j.is_fetchable() && j.message == "released");
        assert!(
            !store
                .release_job(again.id, &reasons("job-fetchable"), "released", 1006)
                .unwrap()
        );

        // Waiting for a wake-up, then canceled: neither the wake-up note
        // nor the wake-up's end (abort or hold) touches it.
        let waiting = fetchable_job(&store);
        assert!(store.set_pending_message(waiting.id, "mail sent").unwrap());
        assert!(matches!(
            store
                .cancel_job(waiting.id, "canceled", "stopping", 1010)
                .unwrap(),
            Cancel::Canceled(_)
        ));
        assert!(!store.set_pending_message(waiting.id, "mail sent").unwrap());
        assert!(
            !store
                .end_waiting_job(
                    waiting.id,
                    4,
                    &reasons("job-hold-until-specified"),
                    "held",
                    1011
                )
                .unwrap()
        );
        let j = store.job(waiting.id).unwrap().unwrap();
        assert_eq!(
            (j.state, j.message.as_str()),
            (job_state::CANCELED, "canceled")
        );
        let other = fetchable_job(&store);
        assert!(
            store
                .end_waiting_job(other.id, 8, &reasons("aborted-by-system"), "aborted", 1012)
                .unwrap()
        );
        assert_eq!(
            store.job(other.id).unwrap().unwrap().state,
            job_state::ABORTED
        );

        // Fetched, then a cancel waits for the device: a progress report
        // keeps the cancel, another device's report changes nothing.
        let dev = "urn:uuid:dev";
        let printing = fetchable_job(&store);
        assert!(
            store
                .acknowledge_job(printing.id, dev, "fetched", 1020)
                .unwrap()
        );
        let plain = fetchable_job(&store);
        assert!(
            store
                .acknowledge_job(plain.id, dev, "fetched", 1020)
                .unwrap()
        );
        assert!(matches!(
            store
                .cancel_job(printing.id, "canceled", "stopping", 1021)
                .unwrap(),
            Cancel::Stopping(_)
        ));
        let j = store
            .report_job_state(
                printing.id,
                dev,
                5,
                &reasons("job-printing"),
                None,
                Some(2),
                1022,
            )
            .unwrap()
            .expect("the holder reports");
        assert_eq!(j.reasons, ["job-printing", "processing-to-stop-point"]);
        assert_eq!((j.message.as_str(), j.impressions), ("stopping", 2));
        assert_eq!(
            store
                .report_job_state(printing.id, "urn:uuid:other", 9, NONE, None, None, 1023)
                .unwrap(),
            None
        );
        // The device leaves: the job with the cancel is canceled, the
        // other offered again; a late report of either changes nothing.
        let back = store
            .hand_back("a", dev, "canceled: left", "offered", 1030)
            .unwrap();
        let states: Vec<(i32, i32)> = back.iter().map(|j| (j.id, j.state)).collect();
        assert_eq!(
            states,
            [
                (printing.id, job_state::CANCELED),
                (plain.id, job_state::PENDING)
            ]
        );
        assert!(back[1].is_fetchable() && back[1].message == "offered");
        for id in [printing.id, plain.id] {
            assert_eq!(
                store
                    .report_job_state(id, dev, 5, &reasons("job-printing"), None, None, 1031)
                    .unwrap(),
                None
            );
        }
        assert_eq!(
            store.job(printing.id).unwrap().unwrap().reasons,
            ["job-canceled-by-user"]
        );
        assert!(store.job(plain.id).unwrap().unwrap().is_fetchable());
        // A final report ends the job; it is not handed back after.
        assert!(
            store
                .acknowledge_job(plain.id, dev, "fetched", 1040)
                .unwrap()
        );
        let j = store
            .report_job_state(
                plain.id,
                dev,
                9,
                &reasons("job-completed-successfully"),
                None,
                None,
                1041,
            )
            .unwrap()
            .unwrap();
        assert_eq!((j.state, j.message.as_str(), j.completed), (9, "", 1041));
        assert!(
            store
                .hand_back("a", dev, "canceled", "offered", 1042)
                .unwrap()
                .is_empty()
        );
    }

    /// A document that finishes arriving after its job was canceled or
    /// aborted (or closed) is refused, and its spooled file removed.
    #[test]
    fn a_document_cannot_join_a_job_that_ended_while_it_arrived() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        let spool_files = || std::fs::read_dir(store.spool_dir()).unwrap().count();

        let open = store
            .create_job(&new_job("a"), 3, &["job-incoming"], None)
            .unwrap();
        let temp = store.temp_path();
        std::fs::write(&temp, b"first").unwrap();
        let j = store
            .add_document(open.id, &doc(&temp, 5), None, 1001)
            .unwrap()
            .expect("an open job takes documents");
        assert_eq!((j.documents, j.octets, j.closed), (1, 5, false));
        assert_eq!(spool_files(), 1);

        // Canceled while the second document was arriving.
        let temp = store.temp_path();
        std::fs::write(&temp, b"second").unwrap();
        assert!(matches!(
            store
                .cancel_job(open.id, "canceled", "stopping", 1002)
                .unwrap(),
            Cancel::Canceled(_)
        ));
        assert_eq!(
            store
                .add_document(open.id, &doc(&temp, 6), Some((NONE, "")), 1003)
                .unwrap(),
            None,
            "a document must not join a canceled job"
        );
        assert!(!temp.exists(), "the refused document's file is removed");
        assert_eq!(spool_files(), 1);
        let j = store.job(open.id).unwrap().unwrap();
        assert_eq!(
            (j.state, j.documents, j.octets, j.closed),
            (job_state::CANCELED, 1, 5, false)
        );
        assert_eq!(store.documents(open.id).unwrap().len(), 1);
        assert!(!store.touch_job(open.id, 1004).unwrap());
        assert!(!store.close_job(open.id, NONE, "", 1004).unwrap());
        assert_eq!(
            store.job(open.id).unwrap().unwrap().state,
            job_state::CANCELED
        );

        // Aborted by the time-out while its first document was arriving.
        let idle = store
            .create_job(&new_job("a"), 3, &["job-incoming"], None)
            .unwrap();
        let ended = store.expire_idle_jobs("a", 1001, "time-out", 1400).unwrap();
        assert_eq!(ended.len(), 1);
        assert_eq!((ended[0].id, ended[0].state), (idle.id, job_state::ABORTED));
        let temp = store.temp_path();
        std::fs::write(&temp, b"late").unwrap();
        assert_eq!(
            store
                .add_document(idle.id, &doc(&temp, 4), None, 1401)
                .unwrap(),
            None
        );
        assert!(!temp.exists());
        assert_eq!(store.job(idle.id).unwrap().unwrap().documents, 0);

        // Closed (Close-Job) meanwhile: no document after the last.
        let closed = fetchable_job(&store);
        let temp = store.temp_path();
        std::fs::write(&temp, b"after").unwrap();
        assert_eq!(
            store
                .add_document(closed.id, &doc(&temp, 5), None, 1500)
                .unwrap(),
            None
        );
        assert!(!temp.exists());
        assert_eq!(store.documents(closed.id).unwrap().len(), 1);
    }

    /// RFC 8011 multiple-operation-time-out: a job is idle from its last
    /// operation, not from its creation.
    #[test]
    fn the_operation_time_out_runs_from_the_last_operation() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        // Both created at 1000.
        let busy = store
            .create_job(&new_job("a"), 3, &["job-incoming"], None)
            .unwrap();
        let empty = store
            .create_job(&new_job("a"), 3, &["job-incoming"], None)
            .unwrap();
        assert_eq!((busy.activity, empty.activity), (1000, 1000));
        // `busy` got a document at 1900, and a long Send-Document began
        // at 2000.
        let temp = store.temp_path();
        std::fs::write(&temp, b"page").unwrap();
        store
            .add_document(busy.id, &doc(&temp, 4), None, 1900)
            .unwrap()
            .unwrap();
        assert!(store.touch_job(busy.id, 2000).unwrap());
        assert_eq!(store.job(busy.id).unwrap().unwrap().activity, 2000);
        // A late, older timestamp does not move it back.
        assert!(store.touch_job(busy.id, 1950).unwrap());
        assert_eq!(store.job(busy.id).unwrap().unwrap().activity, 2000);

        // At 2100 (300 s time-out): `empty` is idle since 1000 and is
        // aborted; `busy`, created just as long ago, is not touched.
        let ended = store
            .expire_idle_jobs("a", 2100 - 300, "time-out", 2100)
            .unwrap();
        let ids: Vec<i32> = ended.iter().map(|j| j.id).collect();
        assert_eq!(ids, [empty.id]);
        let e = store.job(empty.id).unwrap().unwrap();
        assert_eq!(
            (
                e.state,
                e.reasons.as_slice(),
                e.message.as_str(),
                e.completed
            ),
            (
                job_state::ABORTED,
                &["aborted-by-system".to_owned()][..],
                "time-out",
                2100
            )
        );
        let b = store.job(busy.id).unwrap().unwrap();
        assert_eq!(
            (b.state, b.closed, b.documents),
            (job_state::PENDING, false, 1)
        );
        // Other sites are not looked at.
        assert!(
            store
                .expire_idle_jobs("b", 9999, "time-out", 9999)
                .unwrap()
                .is_empty()
        );

        // 300 s after its last operation, a job with a document is closed
        // (and offered to the device as it is).
        let ended = store
            .expire_idle_jobs("a", 2301 - 300, "time-out", 2301)
            .unwrap();
        assert_eq!(ended.len(), 1);
        let b = &ended[0];
        assert_eq!(
            (b.id, b.state, b.closed, b.reasons.as_slice()),
            (
                busy.id,
                job_state::PENDING,
                true,
                &["job-fetchable".to_owned()][..]
            )
        );
        assert!(b.is_fetchable());
        // Ended jobs are not ended again.
        assert!(
            store
                .expire_idle_jobs("a", 9999, "time-out", 9999)
                .unwrap()
                .is_empty()
        );
    }

    /// A store written before jobs had `activity` opens, and its jobs
    /// count their time-out from their creation.
    #[test]
    fn an_old_store_gains_the_activity_column() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        {
            let c = Connection::open(dir.path().join("ipp.db")).unwrap();
            c.execute_batch(SCHEMA).unwrap();
            c.execute(
                "INSERT INTO jobs (site, uuid, state, name, user, client_addr, client_port, \
                 format, template, created) VALUES ('a', 'urn:uuid:1', 3, 'doc', 'alice', \
                 '192.0.2.1', 40000, 'application/pdf', x'', 1234)",
                [],
            )
            .unwrap();
        }
        let store = JobStore::open(dir.path()).unwrap();
        let jobs = store.jobs("a", None).unwrap();
        assert_eq!((jobs[0].created, jobs[0].activity), (1234, 1234));
        drop(store);
        // Opening again runs no migration twice.
        let store = JobStore::open(dir.path()).unwrap();
        let version: i64 = store
            .with(|c| c.query_row("PRAGMA user_version", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(version, MIGRATIONS.len() as i64);
        assert_eq!(store.jobs("a", None).unwrap()[0].activity, 1234);
    }
    /// A device is known by (site, uuid): the same UUID in two sites is
    /// two devices, and handing one back leaves the other's jobs alone.
    /// A store from before keeps its devices.
    #[test]
    fn devices_are_keyed_by_site_and_uuid() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("spool")).unwrap();
        {
            let c = Connection::open(dir.path().join("ipp.db")).unwrap();
            // As version 2 left it.
            c.execute_batch(SCHEMA).unwrap();
            for sql in &MIGRATIONS[..2] {
                c.execute_batch(sql).unwrap();
            }
            c.execute_batch("PRAGMA user_version = 2").unwrap();
            c.execute(
                "INSERT INTO devices (uuid, site, user, attrs, registered) \
                 VALUES ('urn:uuid:old', 'a', 'osaka', x'', 900)",
                [],
            )
            .unwrap();
        }
        let store = JobStore::open(dir.path()).unwrap();
        let old = store.devices("a").unwrap();
        assert_eq!(
            (old.len(), old[0].uuid.as_str(), old[0].user.as_str()),
            (1, "urn:uuid:old", "osaka")
        );

        let dev = "urn:uuid:dev";
        store.upsert_device(dev, "a", "osaka", b"", 1000).unwrap();
        store.upsert_device(dev, "b", "kyoto", b"", 1001).unwrap();
        assert_eq!(store.devices("a").unwrap().len(), 2);
        assert_eq!(store.devices("b").unwrap().len(), 1);
        assert_eq!(
            store
                .device_of_another(dev, "b", "kyoto")
                .unwrap()
                .as_deref(),
            Some("a")
        );
        assert_eq!(store.device_of_another(dev, "b", "osaka").unwrap(), None);
        assert_eq!(
            store
                .device_of_another("urn:uuid:new", "b", "kyoto")
                .unwrap(),
            None
        );

        let job = fetchable_job(&store);
        assert!(store.acknowledge_job(job.id, dev, "fetched", 1010).unwrap());
        store.detach_device("b", dev).unwrap();
        assert!(
            store
                .hand_back("b", dev, "c", "o", 1011)
                .unwrap()
                .is_empty()
        );
        let j = store.job(job.id).unwrap().unwrap();
        assert_eq!((j.state, j.device.as_str()), (job_state::PROCESSING, dev));
        let a = store.devices("a").unwrap();
        assert!(a.iter().all(|d| !d.detached), "site a's device stays");
        assert!(store.devices("b").unwrap()[0].detached);
        assert_eq!(store.hand_back("a", dev, "c", "o", 1012).unwrap().len(), 1);
    }
    /// A job handed back from a device can be taken back by that device
    /// only, and only while no other device took it.
    #[test]
    fn only_the_former_holder_reclaims_and_only_while_untaken() {
        let dir = tempfile::tempdir().unwrap();
        let store = JobStore::open(dir.path()).unwrap();
        let (a, b) = ("urn:uuid:a", "urn:uuid:b");
        let job = fetchable_job(&store);
        assert!(!store.reclaim_job(job.id, a, "back", 1000).unwrap());
        assert!(store.acknowledge_job(job.id, a, "fetched", 1001).unwrap());
        let back = store.hand_back("a", a, "c", "offered", 1002).unwrap();
        assert_eq!(back[0].last_device, a);
        assert!(back[0].is_fetchable());
        assert!(!store.reclaim_job(job.id, b, "back", 1003).unwrap());
        assert!(store.reclaim_job(job.id, a, "back", 1004).unwrap());
        let j = store.job(job.id).unwrap().unwrap();
        assert_eq!(
            (j.state, j.device.as_str(), j.message.as_str()),
            (job_state::PROCESSING, a, "back")
        );
        // Handed back again, then taken by another device first.
        store.hand_back("a", a, "c", "offered", 1005).unwrap();
        assert!(store.acknowledge_job(job.id, b, "fetched", 1006).unwrap());
        assert!(!store.reclaim_job(job.id, a, "back", 1007).unwrap());
        assert_eq!(store.job(job.id).unwrap().unwrap().device, b);
    }
}
