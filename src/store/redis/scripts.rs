//! The Lua scripts that make every user write atomic on the server, the commands that call
//! them, and what their answers mean.

use bytes::Bytes;
use redis::{Cmd, RedisResult, Script, Value};

use super::concern::Answer;
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

/// A Lua script, called with its text (which works alone on any node) or by its hash behind
/// a [`Lua::load`] in the same pipeline (which a batch of calls takes, to send the text once).
pub(super) struct Lua {
    text: &'static str,
    hash: String,
}

impl Lua {
    pub(super) fn new(text: &'static str) -> Lua {
        Lua {
            text,
            hash: Script::new(text).get_hash().to_string(),
        }
    }

    /// Loads the script: the first command of a pipeline of calls by hash, so that they run
    /// whatever the server had cached (a restarted server, a promoted replica, a node that
    /// took the slot have none).
    pub(super) fn load(&self) -> Cmd {
        redis::cmd("SCRIPT").arg("LOAD").arg(self.text).clone()
    }

    /// A call, its keys and arguments to follow: by hash behind a [`Lua::load`] (`loaded`),
    /// else with the script's text.
    pub(super) fn call(&self, loaded: bool) -> Cmd {
        if loaded {
            redis::cmd("EVALSHA").arg(&self.hash).clone()
        } else {
            redis::cmd("EVAL").arg(self.text).clone()
        }
    }
}

/// The user scripts: the command of each user write, for both Redis backends to send (with
/// the `WAIT` of their write concern, see [`super::concern`]), and what its answer means. The
/// store sends each command to its server (on a cluster, to the master of the key's slot).
pub(super) struct Scripts {
    add: Lua,
    update: Lua,
    import: Lua,
}

impl Scripts {
    pub(super) fn new() -> Scripts {
        Scripts {
            add: Lua::new(ADD),
            update: Lua::new(UPDATE),
            import: Lua::new(IMPORT),
        }
    }

    /// Creates the user at `key` as `json` unless it exists; see [`added`].
    pub(super) fn add(&self, key: &str, json: &UserJson) -> Cmd {
        self.add
            .call(false)
            .arg(1)
            .arg(key)
            .arg(json.as_bytes())
            .clone()
    }

    /// Replaces the data of the user at `key` with `user`'s, keeping its `created_at`; see
    /// [`updated`].
    pub(super) fn update(&self, key: &str, user: &NewUser, now: Timestamp) -> Cmd {
        self.update
            .call(false)
            .arg(1)
            .arg(key)
            .arg(user.tail(now))
            .clone()
    }

    /// Deletes the user at `key`; see [`deleted`].
    pub(super) fn delete(key: &str) -> Cmd {
        redis::cmd("DEL").arg(key).clone()
    }

    /// Loads the import script, for [`Scripts::import`] calls by hash behind it.
    pub(super) fn import_load(&self) -> Cmd {
        self.import.load()
    }

    /// Writes `batch` (each user with its key) in one script call, each user one atomic
    /// write; see [`imported`]. The keys must be of one slot where the server is a cluster.
    pub(super) fn import(
        &self,
        batch: &[(&str, &ImportUser)],
        override_existing: bool,
        now: Timestamp,
        loaded: bool,
    ) -> Cmd {
        let mut call = self.import.call(loaded);
        call.arg(batch.len());
        for (key, _) in batch {
            call.arg(*key);
        }
        call.arg(if override_existing { "1" } else { "0" });
        for (_, import) in batch {
            call.arg(import.to_json(now).as_bytes())
                .arg(if import.keeps_created_at() { "1" } else { "0" });
        }
        call
    }
}

/// What the answer to [`Scripts::add`] of `user` as `json` means: created, the stored user
/// (`get_or_create`), or a conflict. A creation the replicas did not confirm is of unknown
/// outcome (see [`Answer::confirm_when`]); a user handed back as it was is not.
pub(super) fn added(
    describe: &str,
    user: &NewUser,
    json: UserJson,
    get_or_create: bool,
    answer: Answer,
) -> Result<Added> {
    let read = |value| {
        let existing: Option<Bytes> = parse(describe, value)?;
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
    };
    answer.confirm_when(read, |added| added.created)
}

/// What the answer to [`Scripts::update`] of `user` means: the user as stored now (once the
/// replicas confirmed it), or why not.
pub(super) fn updated(describe: &str, user: &NewUser, answer: Answer) -> Result<UserJson> {
    answer.confirm(|value| {
        let updated: Option<(u8, Bytes)> = parse(describe, value)?;
        match updated {
            Some((1, bytes)) => stored_user(user.id(), bytes),
            // Left as it was: the full check says what is wrong with it.
            Some((_, old)) => Err(stored_user(user.id(), old)
                .err()
                .unwrap_or_else(|| kept_part_corrupt(user.id()))),
            None => Err(not_found(user.id())),
        }
    })
}

/// What the answer to [`Scripts::delete`] of `id` means (once the replicas confirmed it).
pub(super) fn deleted(describe: &str, id: &UserId, answer: Answer) -> Result<()> {
    answer.confirm(|value| match parse::<i64>(describe, value)? {
        1 => Ok(()),
        _ => Err(not_found(id)),
    })
}

/// What the answer to [`Scripts::import`] of `batch` means: each user's outcome, in batch
/// order, or why nothing was written. An import that wrote any user, and that the replicas
/// did not confirm, is of unknown outcome; one that found every user there and left them
/// changed nothing.
pub(super) fn imported(
    describe: &str,
    batch: &[(&str, &ImportUser)],
    answer: Answer,
) -> Result<Vec<ImportOutcome>> {
    let read = |value| {
        let codes: Vec<u8> = parse(describe, value)?;
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
    };
    answer.confirm_when(read, |outcomes: &Vec<ImportOutcome>| {
        outcomes.iter().any(|&o| o != ImportOutcome::Skipped)
    })
}

/// An answer read as `T`, or the failure to get it.
fn parse<T: redis::FromRedisValue>(describe: &str, answer: RedisResult<Value>) -> Result<T> {
    let value = answer.map_err(|e| write_fault(describe, e))?;
    redis::from_redis_value(value).map_err(|e| write_fault(describe, e.into()))
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
