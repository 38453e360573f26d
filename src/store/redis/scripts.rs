//! The Lua scripts that make every write atomic on the server, and the single-key writes both
//! Redis backends make with them.

use bytes::Bytes;
use redis::Script;
use redis::aio::ConnectionLike;

use super::fault::write_fault;
use crate::error::{Error, ErrorKind, Result};
use crate::store::{Added, ImportOutcome, ImportUser, conflict, not_found, stored_user};
use crate::user::{NewUser, Timestamp, UserId, UserJson};

/// Returns the existing record, or writes ARGV[1] and returns nil.
const ADD: &str = r"
local old = redis.call('GET', KEYS[1])
if old then return old end
redis.call('SET', KEYS[1], ARGV[1])
return false
";

/// A Lua function, `keeps(record)`: true when the record's first 42 bytes are
/// `{"created_at":"<timestamp>` with a real timestamp in [`Timestamp`]'s form, the part an
/// update or an import keeps.
///
/// The scripts run on whatever the key holds, and a record written there by something else may
/// not have our shape: one whose kept part is not ours is never built upon (the client's
/// check of every record it reads would refuse the result, but it would be stored by then).
/// Only the kept part is checked here, which is all the new record takes from the old one; the
/// client checks the rest of whatever it reads. This is the rule of `Timestamp::is_exact`.
macro_rules! keeps_lua {
    () => {
        r#"
local function keeps(record)
  local y, mo, d, h, mi, s = string.match(record,
    '^{"created_at":"([0-9][0-9][0-9][0-9])%-([0-9][0-9])%-([0-9][0-9])T([0-9][0-9]):([0-9][0-9]):([0-9][0-9])%.[0-9][0-9][0-9][0-9][0-9][0-9]Z')
  if not y then return false end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  local days = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
  if y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then days[2] = 29 end
  return mo >= 1 and mo <= 12 and d >= 1 and d <= days[mo]
    and tonumber(h) < 24 and tonumber(mi) < 60 and tonumber(s) < 60
end
"#
    };
}

/// Keeps the stored created_at (bytes 1..42) and writes ARGV[1] behind it: answers
/// `{1, new record}`; `{0, old record}` and writes nothing if the stored record's created_at
/// is not one to keep; nil if absent.
const UPDATE: &str = concat!(
    keeps_lua!(),
    r"
local old = redis.call('GET', KEYS[1])
if not old then return false end
if not keeps(old) then return {0, old} end
local new = string.sub(old, 1, 42) .. ARGV[1]
redis.call('SET', KEYS[1], new)
return {1, new}
"
);

/// ARGV[1]: override flag, then per key a record and a keep-created_at flag. Answers per key:
/// 0 created, 1 skipped, 2 overridden. If a record whose created_at is to be kept has none to
/// keep, nothing is written: that key is answered 3, the others 4.
const IMPORT: &str = concat!(
    keeps_lua!(),
    r"
local override = ARGV[1] == '1'
local out = {}
if override then
  local corrupt = false
  for i, key in ipairs(KEYS) do
    out[i] = 4
    if ARGV[2 * i + 1] == '1' then
      local old = redis.call('GET', key)
      if old and not keeps(old) then
        out[i] = 3
        corrupt = true
      end
    end
  end
  if corrupt then return out end
end
for i, key in ipairs(KEYS) do
  local json = ARGV[2 * i]
  local old = redis.call('GET', key)
  if not old then
    redis.call('SET', key, json)
    out[i] = 0
  elseif override then
    if ARGV[2 * i + 1] == '1' then json = string.sub(old, 1, 42) .. string.sub(json, 43) end
    redis.call('SET', key, json)
    out[i] = 2
  else
    out[i] = 1
  end
end
return out
"
);

/// The scripts, and the single-key writes both Redis backends make with them. The connection
/// routes each write (on a cluster, to the node of the key's slot).
pub(super) struct Scripts {
    add: Script,
    update: Script,
    import: Script,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            add: Script::new(ADD),
            update: Script::new(UPDATE),
            import: Script::new(IMPORT),
        }
    }

    /// Creates the user at `key` unless it exists (then: conflict, or with `get_or_create`
    /// the stored user).
    pub(super) async fn add(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        describe: &str,
        key: String,
        user: &NewUser,
        get_or_create: bool,
    ) -> Result<Added> {
        let now = Timestamp::now();
        let json = user.to_json(now, now);
        let existing: Option<Bytes> = self
            .add
            .key(key)
            .arg(json.as_bytes())
            .invoke_async(conn)
            .await
            .map_err(|e| write_fault(describe, e))?;
        match existing {
            None => Ok(Added {
                user: json,
                created: true,
            }),
            Some(bytes) if get_or_create => Ok(Added {
                user: stored_user(user.id(), bytes)?,
                created: false,
            }),
            Some(_) => Err(conflict(user.id())),
        }
    }

    /// Replaces the data of the user at `key`, keeping its `created_at`.
    pub(super) async fn update(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        describe: &str,
        key: String,
        user: &NewUser,
    ) -> Result<UserJson> {
        let updated: Option<(u8, Bytes)> = self
            .update
            .key(key)
            .arg(user.tail(Timestamp::now()))
            .invoke_async(conn)
            .await
            .map_err(|e| write_fault(describe, e))?;
        match updated {
            Some((1, bytes)) => stored_user(user.id(), bytes),
            // Left as it was: the full check says what is wrong with it.
            Some((_, old)) => Err(stored_user(user.id(), old)
                .err()
                .unwrap_or_else(|| kept_part_corrupt(user.id()))),
            None => Err(not_found(user.id())),
        }
    }

    /// Writes `batch` (each user with its key) in one script call, each user one atomic write;
    /// the outcomes in batch order. The keys must be of one slot where the server is a cluster.
    pub(super) async fn import(
        &self,
        conn: &mut (impl ConnectionLike + Send),
        describe: &str,
        batch: &[(&str, &ImportUser)],
        override_existing: bool,
        now: Timestamp,
    ) -> Result<Vec<ImportOutcome>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut call = self.import.prepare_invoke();
        call.arg(if override_existing { "1" } else { "0" });
        for (key, import) in batch {
            call.key(*key)
                .arg(import.to_json(now).as_bytes())
                .arg(if import.keeps_created_at() { "1" } else { "0" });
        }
        let codes: Vec<u8> = call
            .invoke_async(conn)
            .await
            .map_err(|e| write_fault(describe, e))?;
        if codes.len() != batch.len() {
            return Err(Error::new(
                ErrorKind::Internal,
                format!("import script answered {} of {}", codes.len(), batch.len()),
            ));
        }
        if let Some(i) = codes.iter().position(|&code| code == 3) {
            let id = batch[i].1.user().id();
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "user {id}: stored user record is corrupt (created_at is not a timestamp); \
                     nothing of this batch was written"
                ),
            ));
        }
        codes.into_iter().map(import_outcome).collect()
    }

    /// Deletes the user at `key`.
    pub(super) async fn delete(
        conn: &mut (impl ConnectionLike + Send),
        describe: &str,
        key: String,
        id: &UserId,
    ) -> Result<()> {
        let removed: i64 = redis::cmd("DEL")
            .arg(key)
            .query_async(conn)
            .await
            .map_err(|e| write_fault(describe, e))?;
        if removed == 1 {
            Ok(())
        } else {
            Err(not_found(id))
        }
    }
}

/// The error for a stored record whose `created_at` a write was to keep but could not.
fn kept_part_corrupt(id: &UserId) -> Error {
    Error::new(
        ErrorKind::Internal,
        format!("user {id}: stored user record is corrupt (created_at is not a timestamp)"),
    )
}

/// What the import script's answer for one key means.
fn import_outcome(code: u8) -> Result<ImportOutcome> {
    match code {
        0 => Ok(ImportOutcome::Created),
        1 => Ok(ImportOutcome::Skipped),
        2 => Ok(ImportOutcome::Overridden),
        other => Err(Error::new(
            ErrorKind::Internal,
            format!("import script answered {other}"),
        )),
    }
}
