//! Collection entries on both Redis backends: the write script, the commands a batch of
//! entry writes is made of, and how their answers are read.
//!
//! An entry is one string key, `{namespace}:object:{collection}:{id}`, holding its stored form:
//! the [`EntryJson`] bytes, preceded by `{owner}\n` when it has an owner. Every write of an
//! entry is one script call on that one key, so it is atomic on the server: an add cannot be
//! won twice, and an update or an upsert keeps the stored owner and `created_at` (always bytes
//! 16 to 42 of the record's fixed 87-byte tail; an import that gives one replaces it). A batch
//! is a pipeline of such calls: one round trip, each entry still its own atomic write.

use bytes::Bytes;
use redis::{Cmd, Value};

use super::concern::Answer;
use super::fault::write_fault;
use super::scripts::Lua;
use crate::collection::{EntryJson, EntryKey, NewEntry};
use crate::error::{Error, ErrorKind, Result};
use crate::store::{Stamps, entry_conflict, entry_not_found, stored_entry};
use crate::user::Timestamp;

/// Writes an entry. KEYS[1]: its key. ARGV: the mode (`a` add, `u` update, `s` upsert), the
/// owner line of a new entry (`alice\n` or empty), the entry's fixed head up to `"data":`, its
/// data, its `updated_at`, the `created_at` of a new entry, and the `created_at` that replaces
/// an existing entry's (empty: keep it). All three are the time of the write but for imports
/// that carry timestamps.
///
/// Answers `{1, created_at}` when it wrote (or finds exactly what this call writes, stamp
/// included: the same call sent again by a client that lost its answer, which must not turn
/// into a conflict); `{2, ''}` for an add whose key is taken; nil for an
/// update of an absent entry; `{0, old record}` (writing nothing) when the stored record is
/// not one whose owner and `created_at` can be kept: it must be the owner line, if any, then
/// this entry's head, then anything, then the tail with a real `created_at`, as the client's
/// full check of every read would demand (the data in between is replaced by the new entry's,
/// so it is not looked at).
const WRITE: &str = r#"
local function kept(record, head)
  local at = 1
  if string.byte(record, 1) ~= 123 then
    local nl = string.find(record, '\n', 1, true)
    if not nl or nl < 2 or nl > 256 then return nil end
    if string.find(string.sub(record, 1, nl - 1), '[^A-Za-z0-9_%-]') then return nil end
    at = nl + 1
  end
  if #record - at + 1 < #head + 2 + 87 then return nil end
  if string.sub(record, at, at + #head - 1) ~= head then return nil end
  local tail = string.sub(record, -87)
  local y, mo, d, h, mi, s = string.match(tail,
    '^,"created_at":"([0-9][0-9][0-9][0-9])%-([0-9][0-9])%-([0-9][0-9])T([0-9][0-9]):([0-9][0-9]):([0-9][0-9])%.[0-9][0-9][0-9][0-9][0-9][0-9]Z","updated_at":"[0-9][0-9][0-9][0-9]%-[0-9][0-9]%-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]%.[0-9][0-9][0-9][0-9][0-9][0-9]Z"}$')
  if not y then return nil end
  y, mo, d = tonumber(y), tonumber(mo), tonumber(d)
  local days = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31}
  if y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0) then days[2] = 29 end
  if not (mo >= 1 and mo <= 12 and d >= 1 and d <= days[mo]
    and tonumber(h) < 24 and tonumber(mi) < 60 and tonumber(s) < 60) then return nil end
  return string.sub(record, 1, at - 1), string.sub(tail, 16, 42)
end
local mode, updated, fresh, given = ARGV[1], ARGV[5], ARGV[6], ARGV[7]
local old = redis.call('GET', KEYS[1])
if old and mode == 'a' then
  -- This very add, sent again after its answer was lost, finds what it wrote.
  local same = ARGV[2] .. ARGV[3] .. ARGV[4]
    .. ',"created_at":"' .. fresh .. '","updated_at":"' .. updated .. '"}'
  if old == same then return {1, fresh} end
  return {2, ''}
end
if not old and mode == 'u' then return false end
local owner, created = ARGV[2], fresh
if old then
  owner, created = kept(old, ARGV[3])
  if not owner then return {0, old} end
  if given ~= '' then created = given end
end
redis.call('SET', KEYS[1], owner .. ARGV[3] .. ARGV[4]
  .. ',"created_at":"' .. created .. '","updated_at":"' .. updated .. '"}')
return {1, created}
"#;

/// What a write does with an entry that exists, or does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Create; a taken key is a conflict.
    Add,
    /// Replace; an absent key is not found.
    Update,
    /// Create or replace.
    Upsert,
}

/// The write script, and the commands that run it.
pub(super) struct EntryScript {
    lua: Lua,
}

impl EntryScript {
    pub(super) fn new() -> EntryScript {
        EntryScript {
            lua: Lua::new(WRITE),
        }
    }

    /// Loads the script: the first command of every pipeline of writes, so that the calls
    /// behind it can name it by its hash whatever the server had cached.
    pub(super) fn load(&self) -> Cmd {
        self.lua.load()
    }

    /// The call writing `entry` at `key` with `stamps` at `now`: by hash behind a
    /// [`EntryScript::load`] (`loaded`), or with the script's text, which works alone on any
    /// node.
    pub(super) fn call(
        &self,
        key: &str,
        (entry, stamps): (&NewEntry, Stamps),
        mode: Mode,
        now: Timestamp,
        loaded: bool,
    ) -> Cmd {
        let mut cmd = self.lua.call(loaded);
        let owner = match entry.owner() {
            Some(owner) => format!("{owner}\n"),
            None => String::new(),
        };
        cmd.arg(1)
            .arg(key)
            .arg(match mode {
                Mode::Add => "a",
                Mode::Update => "u",
                Mode::Upsert => "s",
            })
            .arg(owner)
            .arg(key_head(entry.key()))
            .arg(entry.data_json())
            .arg(stamps.updated(now).as_str())
            .arg(stamps.fresh(now).as_str())
            .arg(
                stamps
                    .given_created()
                    .as_ref()
                    .map_or("", Timestamp::as_str),
            );
        cmd
    }
}

/// The start of every record of the entry `key`, up to its data: what the script checks a
/// stored record against before keeping its `created_at`.
fn key_head(key: &EntryKey) -> String {
    // Names and ids are [A-Za-z0-9_-]: nothing to escape.
    format!(
        r#"{{"id":"{}","collection":"{}","foreign_id":"{key}","data":"#,
        key.id(),
        key.collection()
    )
}

/// What the script's answer (or the failure to get one) means for `entry`, written with
/// `stamps` at `now`: the entry as now stored (once the replicas confirmed it), or why not.
pub(super) fn written(
    describe: &str,
    (entry, stamps): (&NewEntry, Stamps),
    now: Timestamp,
    answer: Answer,
) -> Result<EntryJson> {
    let key = entry.key();
    answer.confirm(|answer| {
        let answer = answer.map_err(|e| write_fault(describe, e))?;
        let answer: Option<(u8, Bytes)> =
            redis::from_redis_value(answer).map_err(|e| write_fault(describe, e.into()))?;
        match answer {
            Some((1, created)) => {
                let text = std::str::from_utf8(&created).unwrap_or_default();
                match Timestamp::parse(text) {
                    Ok(at) if at.as_str() == text => Ok(entry.to_json(at, stamps.updated(now))),
                    _ => Err(Error::new(
                        ErrorKind::Internal,
                        format!("entry {key}: the write script answered created_at {created:?}"),
                    )),
                }
            }
            Some((2, _)) => Err(entry_conflict(key)),
            // Left as it was: the full check says what is wrong with it.
            Some((_, old)) => Err(stored_entry(key, old).err().unwrap_or_else(|| {
                Error::new(
                    ErrorKind::Internal,
                    format!("entry {key}: stored entry record is corrupt; it was left as it was"),
                )
            })),
            None => Err(entry_not_found(key)),
        }
    })
}

/// The number of keys a `DEL` answered it removed; a removal the replicas did not confirm is
/// of unknown outcome, a `DEL` that found nothing is not.
pub(super) fn removed(describe: &str, answer: Answer) -> Result<u64> {
    let read = |answer: redis::RedisResult<Value>| {
        let answer = answer.map_err(|e| write_fault(describe, e))?;
        redis::from_redis_value(answer).map_err(|e| write_fault(describe, e.into()))
    };
    answer.confirm_when(read, |&removed| removed > 0)
}
