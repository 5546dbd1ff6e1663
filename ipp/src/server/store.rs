//! The front's durable state: jobs, documents, output devices and paused
//! sites in SQLite (WAL, synchronous=FULL), document bytes in spool files.
//!
//! A document is written to a temporary file and fsync'd, then renamed
//! into place and recorded in the same transaction that creates or
//! updates its job, before the client gets its answer. A restart loses
//! nothing that was acknowledged; files without a row are removed at open.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension as _, params};

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

const JOB_COLUMNS: &str = "id, site, uuid, state, reasons, message, name, user, client_addr, \
     client_port, format, template, created, processing, completed, device, closed, documents, \
     octets, impressions";

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

/// fsync a directory so a rename in it is durable.
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })
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
        let conn = Connection::open(&db_path).map_err(db_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;",
        )
        .map_err(db_err)?;
        conn.execute_batch(SCHEMA).map_err(db_err)?;
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
                 client_port, format, template, created) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
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
                    job.now
                ],
            )?;
            let id = tx.last_insert_rowid() as i32;
            if let Some((temp, name, size)) = doc {
                let path = self.spool.join(format!("job-{id}-doc-1"));
                std::fs::rename(temp, &path)
                    .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
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
        if doc.is_some() {
            sync_dir(&self.spool)?;
        }
        self.job(id)?
            .ok_or_else(|| self.db_err(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Adds a document to an open job (Send-Document); `last` closes it.
    pub fn add_document(
        &self,
        id: i32,
        temp: &Path,
        format: &str,
        name: &str,
        size: i64,
        last: bool,
    ) -> Result<JobRow, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let number: i32 = tx.query_row(
                "SELECT documents FROM jobs WHERE id = ?",
                params![id],
                |r| r.get(0),
            )?;
            let number = number + 1;
            let path = self.spool.join(format!("job-{id}-doc-{number}"));
            std::fs::rename(temp, &path)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            tx.execute(
                "INSERT INTO documents (job, number, format, name, path, size) VALUES (?,?,?,?,?,?)",
                params![id, number, format, name, path.to_string_lossy(), size],
            )?;
            tx.execute(
                "UPDATE jobs SET documents = ?, octets = octets + ?, closed = ? WHERE id = ?",
                params![number, size, last, id],
            )?;
            tx.commit()
        })?;
        sync_dir(&self.spool)?;
        self.job(id)?
            .ok_or_else(|| self.db_err(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Closes a job without a further document (Close-Job, or
    /// Send-Document with last-document and no data).
    pub fn close_job(&self, id: i32) -> Result<(), StoreError> {
        self.with(|c| c.execute("UPDATE jobs SET closed = 1 WHERE id = ?", params![id]))
            .map(drop)
    }

    /// One job.
    pub fn job(&self, id: i32) -> Result<Option<JobRow>, StoreError> {
        self.with(|c| {
            c.query_row(
                &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?"),
                params![id],
                job_from_row,
            )
            .optional()
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
                "UPDATE jobs SET state = ?, reasons = ?, message = ?, \
                 processing = CASE WHEN processing = 0 AND ? IN (5, 6, 7, 8, 9) THEN ? ELSE processing END, \
                 completed = CASE WHEN ? IN (7, 8, 9) THEN ? ELSE completed END WHERE id = ?",
                params![state, reasons.join(" "), message, state, now, state, now, id],
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

    /// Registers or updates a device.
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
                 VALUES (?,?,?,?,?,0) ON CONFLICT(uuid) DO UPDATE SET attrs = excluded.attrs, \
                 detached = 0",
                params![uuid, site, user, attrs, now],
            )
        })
        .map(drop)
    }

    /// Marks a device detached.
    pub fn detach_device(&self, uuid: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE devices SET detached = 1 WHERE uuid = ?",
                params![uuid],
            )
        })
        .map(drop)
    }

    /// The devices of a site, newest registration last.
    pub fn devices(&self, site: &str) -> Result<Vec<DeviceRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(
                "SELECT uuid, site, user, attrs, registered, detached FROM devices \
                 WHERE site = ? ORDER BY registered, rowid",
            )?;
            let rows = st.query_map(params![site], |r| {
                Ok(DeviceRow {
                    uuid: r.get(0)?,
                    site: r.get(1)?,
                    user: r.get(2)?,
                    attrs: r.get(3)?,
                    registered: r.get(4)?,
                    detached: r.get(5)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Jobs a device acknowledged that are not final: the ones to offer
    /// again when the device is gone.
    pub fn unfinished_of_device(&self, uuid: &str) -> Result<Vec<JobRow>, StoreError> {
        self.with(|c| {
            let mut st = c.prepare(&format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE device = ? AND state NOT IN (7, 8, 9) ORDER BY id"
            ))?;
            let rows = st.query_map(params![uuid], job_from_row)?;
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
            client_addr: "192.0.2.1",
            client_port: 40000,
            format: "application/pdf",
            template: b"",
            now: 1000,
        }
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
            .add_document(job.id, &temp, "application/pdf", "d", 1, true)
            .unwrap();
        assert!(job.is_fetchable());
        store.set_device(job.id, "urn:uuid:dev").unwrap();
        store
            .set_state(job.id, 5, &["job-printing".into()], "", 1010)
            .unwrap();
        assert_eq!(store.unfinished_of_device("urn:uuid:dev").unwrap().len(), 1);
        store
            .set_state(job.id, 9, &["job-completed-successfully".into()], "", 1020)
            .unwrap();
        let j = store.job(job.id).unwrap().unwrap();
        assert_eq!((j.processing, j.completed), (1010, 1020));
        assert!(
            store
                .unfinished_of_device("urn:uuid:dev")
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
}
