//! The relay's user store: SQLite (embedded, WAL) holding user IDs,
//! Argon2id password hashes, a disabled flag and group memberships.
//! Used both by the running server and by `faxgate relay user ...`, which
//! may run at the same time; SQLite's locking makes that safe.

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rusqlite::{OptionalExtension, params};
use std::path::{Path, PathBuf};

/// Errors from the user store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("user store {path}: {source}")]
    Db {
        /// The database file.
        path: PathBuf,
        /// The error.
        source: rusqlite::Error,
    },
    /// Hashing failed (bad parameters).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The user ID is not acceptable.
    #[error("invalid user ID `{0}`: use 1..=64 letters, digits, '.', '_', '-', '@' or '%'")]
    InvalidUser(String),
    /// The group name is not acceptable.
    #[error("invalid group name `{0}`: use 1..=64 letters, digits, '.', '_' or '-'")]
    InvalidGroup(String),
    /// The user already exists.
    #[error("user `{0}` already exists")]
    Exists(String),
    /// The user does not exist.
    #[error("no such user `{0}`")]
    NoSuchUser(String),
    /// An empty password was given.
    #[error("the password must not be empty")]
    EmptyPassword,
}

/// One user as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UserRecord {
    /// The user ID.
    pub name: String,
    /// The PHC-format Argon2id hash.
    #[serde(skip)]
    pub hash: String,
    /// Disabled users cannot log in.
    pub disabled: bool,
    /// Groups the user belongs to, sorted.
    pub groups: Vec<String>,
}

/// The store. Cheap to open; each call takes the connection's lock.
#[derive(Debug)]
pub struct UserStore {
    path: PathBuf,
    conn: std::sync::Mutex<rusqlite::Connection>,
    params: Params,
}

impl UserStore {
    /// Opens (creating if needed) the database at `path`. `memory_kib`
    /// and `iterations` set the cost of hashes made by this store.
    pub fn open(path: &Path, memory_kib: u32, iterations: u32) -> Result<Self, StoreError> {
        let db = |source| StoreError::Db {
            path: path.to_owned(),
            source,
        };
        let conn = rusqlite::Connection::open(path).map_err(db)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(db)?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA foreign_keys = ON;
             CREATE TABLE IF NOT EXISTS users(
                 name TEXT PRIMARY KEY,
                 hash TEXT NOT NULL,
                 disabled INTEGER NOT NULL DEFAULT 0,
                 created INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS user_groups(
                 user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
                 grp TEXT NOT NULL,
                 PRIMARY KEY(user, grp));",
        )
        .map_err(db)?;
        let params = Params::new(memory_kib, iterations, 1, None)
            .map_err(|e| StoreError::Hash(e.to_string()))?;
        Ok(Self {
            path: path.to_owned(),
            conn: std::sync::Mutex::new(conn),
            params,
        })
    }

    fn db(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Db {
            path: self.path.clone(),
            source,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        // A panic while holding the lock leaves SQLite consistent (every
        // write is one statement or one transaction), so poisoning is moot.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn argon2(&self) -> Argon2<'static> {
        Argon2::new(Algorithm::Argon2id, Version::V0x13, self.params.clone())
    }

    /// Hashes a password with Argon2id and a fresh salt.
    pub fn hash_password(&self, password: &str) -> Result<String, StoreError> {
        if password.is_empty() {
            return Err(StoreError::EmptyPassword);
        }
        let salt = SaltString::generate(&mut rand::rngs::OsRng);
        self.argon2()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| StoreError::Hash(e.to_string()))
    }

    /// Adds a user.
    pub fn add_user(
        &self,
        name: &str,
        password: &str,
        groups: &[String],
    ) -> Result<(), StoreError> {
        check_user(name)?;
        for g in groups {
            check_group(g)?;
        }
        let hash = self.hash_password(password)?;
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.db())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let inserted = tx
            .execute(
                "INSERT OR IGNORE INTO users(name, hash, disabled, created) VALUES (?1, ?2, 0, ?3)",
                params![name, hash, now],
            )
            .map_err(self.db())?;
        if inserted == 0 {
            return Err(StoreError::Exists(name.to_owned()));
        }
        for g in groups {
            tx.execute(
                "INSERT OR IGNORE INTO user_groups(user, grp) VALUES (?1, ?2)",
                params![name, g],
            )
            .map_err(self.db())?;
        }
        tx.commit().map_err(self.db())
    }

    /// Replaces a user's password.
    pub fn set_password(&self, name: &str, password: &str) -> Result<(), StoreError> {
        let hash = self.hash_password(password)?;
        let n = self
            .lock()
            .execute(
                "UPDATE users SET hash = ?2 WHERE name = ?1",
                params![name, hash],
            )
            .map_err(self.db())?;
        if n == 0 {
            return Err(StoreError::NoSuchUser(name.to_owned()));
        }
        Ok(())
    }

    /// Disables or re-enables a user.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<(), StoreError> {
        let n = self
            .lock()
            .execute(
                "UPDATE users SET disabled = ?2 WHERE name = ?1",
                params![name, disabled],
            )
            .map_err(self.db())?;
        if n == 0 {
            return Err(StoreError::NoSuchUser(name.to_owned()));
        }
        Ok(())
    }

    /// Replaces a user's groups.
    pub fn set_groups(&self, name: &str, groups: &[String]) -> Result<(), StoreError> {
        for g in groups {
            check_group(g)?;
        }
        let mut conn = self.lock();
        let tx = conn.transaction().map_err(self.db())?;
        let exists: Option<i64> = tx
            .query_row("SELECT 1 FROM users WHERE name = ?1", [name], |r| r.get(0))
            .optional()
            .map_err(self.db())?;
        if exists.is_none() {
            return Err(StoreError::NoSuchUser(name.to_owned()));
        }
        tx.execute("DELETE FROM user_groups WHERE user = ?1", [name])
            .map_err(self.db())?;
        for g in groups {
            tx.execute(
                "INSERT OR IGNORE INTO user_groups(user, grp) VALUES (?1, ?2)",
                params![name, g],
            )
            .map_err(self.db())?;
        }
        tx.commit().map_err(self.db())
    }

    /// Deletes a user and its group memberships.
    pub fn delete_user(&self, name: &str) -> Result<(), StoreError> {
        let n = self
            .lock()
            .execute("DELETE FROM users WHERE name = ?1", [name])
            .map_err(self.db())?;
        if n == 0 {
            return Err(StoreError::NoSuchUser(name.to_owned()));
        }
        Ok(())
    }

    /// Looks a user up.
    pub fn get(&self, name: &str) -> Result<Option<UserRecord>, StoreError> {
        let conn = self.lock();
        let row = conn
            .query_row(
                "SELECT name, hash, disabled FROM users WHERE name = ?1",
                [name],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, bool>(2)?,
                    ))
                },
            )
            .optional()
            .map_err(self.db())?;
        let Some((name, hash, disabled)) = row else {
            return Ok(None);
        };
        let groups = Self::groups_of(&conn, &name).map_err(self.db())?;
        Ok(Some(UserRecord {
            name,
            hash,
            disabled,
            groups,
        }))
    }

    fn groups_of(conn: &rusqlite::Connection, name: &str) -> rusqlite::Result<Vec<String>> {
        let mut stmt =
            conn.prepare_cached("SELECT grp FROM user_groups WHERE user = ?1 ORDER BY grp")?;
        let rows = stmt.query_map([name], |r| r.get(0))?;
        rows.collect()
    }

    /// All users, sorted by name.
    pub fn list(&self) -> Result<Vec<UserRecord>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare("SELECT name, hash, disabled FROM users ORDER BY name")
            .map_err(self.db())?;
        let rows: Vec<(String, String, bool)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.db())?
            .collect::<Result<_, _>>()
            .map_err(self.db())?;
        drop(stmt);
        rows.into_iter()
            .map(|(name, hash, disabled)| {
                let groups = Self::groups_of(&conn, &name).map_err(self.db())?;
                Ok(UserRecord {
                    name,
                    hash,
                    disabled,
                    groups,
                })
            })
            .collect()
    }
}

/// Verifies `password` against a PHC hash. Argon2's verifier compares the
/// digests in constant time. A hash that does not parse never verifies.
pub fn verify_password(hash: &str, password: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

fn check_user(name: &str) -> Result<(), StoreError> {
    if crate::protocol::valid_user_id(name) {
        Ok(())
    } else {
        Err(StoreError::InvalidUser(name.to_owned()))
    }
}

fn check_group(name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidGroup(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempfile::TempDir, UserStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = UserStore::open(&dir.path().join("users.db"), 64, 1).unwrap();
        (dir, s)
    }

    #[test]
    fn add_verify_disable_delete() {
        let (_d, s) = store();
        s.add_user("tokyo", "pw1", &["branches".into()]).unwrap();
        let u = s.get("tokyo").unwrap().unwrap();
        assert!(u.hash.starts_with("$argon2id$"), "{}", u.hash);
        assert!(verify_password(&u.hash, "pw1"));
        assert!(!verify_password(&u.hash, "pw2"));
        assert_eq!(u.groups, vec!["branches".to_owned()]);
        assert!(matches!(
            s.add_user("tokyo", "x", &[]),
            Err(StoreError::Exists(_))
        ));
        s.set_password("tokyo", "pw2").unwrap();
        assert!(verify_password(
            &s.get("tokyo").unwrap().unwrap().hash,
            "pw2"
        ));
        s.set_disabled("tokyo", true).unwrap();
        assert!(s.get("tokyo").unwrap().unwrap().disabled);
        s.delete_user("tokyo").unwrap();
        assert!(s.get("tokyo").unwrap().is_none());
        assert!(matches!(
            s.delete_user("tokyo"),
            Err(StoreError::NoSuchUser(_))
        ));
    }

    #[test]
    fn bad_names_and_empty_password_are_refused() {
        let (_d, s) = store();
        assert!(matches!(
            s.add_user("a b", "pw", &[]),
            Err(StoreError::InvalidUser(_))
        ));
        assert!(matches!(
            s.add_user("a", "pw", &["g g".into()]),
            Err(StoreError::InvalidGroup(_))
        ));
        assert!(matches!(
            s.add_user("a", "", &[]),
            Err(StoreError::EmptyPassword)
        ));
        assert!(!verify_password("not a hash", "pw"));
    }
}
