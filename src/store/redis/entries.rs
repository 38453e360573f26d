//! Collection entries on both Redis backends: the write script, the command a batch of
//! entry writes is made of, and how its answer is read.
//!
//! An entry is one string key, `{namespace}:object:{collection}:{id}`, holding its stored form:
//! the [`EntryJson`] bytes, preceded by `{owner}\n` when it has an owner. A write of entries is
//! one script call over their keys, so it is atomic on the server: an add cannot be won twice,
//! and an update or an upsert keeps the stored owner and `created_at` (always bytes 16 to 42
//! of the record's fixed 87-byte tail; an import that gives one replaces it). What a user may
//! do to its own entry, an update or a delete made only if it owns it, reads the owner in the
//! call that writes (the write script's mode `o`, the owned-delete script): no other write can
//! come between the check and the write, as it could between a `GET` and a write. The script
//! checks every stored record of the batch before it writes any: if one of them cannot be
//! kept (corrupt), nothing of the batch is written, as the file store's transaction and the
//! users' import do. A batch on one Redis is one call; on a cluster, a script may only touch
//! keys of one slot, so a batch is one call per slot, each all or nothing (see
//! [`super::ClusterStore`]).

use bytes::Bytes;
use redis::{Cmd, Value};

use super::concern::Answer;
use super::fault::write_fault;
use super::scripts::Lua;
use crate::collection::{EntryJson, EntryKey, NewEntry};
use crate::error::{Error, ErrorKind, Result};
use crate::store::{Stamps, entry_conflict, entry_not_found, entry_not_owned, stored_entry};
use crate::user::{Timestamp, UserId};

/// Writes entries. KEYS: their keys. ARGV: the mode (`a` add, `u` update, `s` upsert, `o`
/// update of an entry owned by a given user), then six for each key: the owner line of a new
/// entry (`alice\n` or empty; in mode `o`, the owner line the stored record must have), the
/// entry's fixed head up to `"data":`, its data, its `updated_at`, the `created_at` of a new
/// entry, and the `created_at` that replaces an existing entry's (empty: keep it). All three
/// are the time of the write but for imports that carry timestamps.
///
/// Answers one answer per key: `{1, created_at}` when it wrote (or finds exactly what this
/// call writes, stamp included: the same call sent again by a client that lost its answer,
/// which must not turn into a conflict); `{2, ''}` for an add whose key is taken; nil for an
/// update of an absent entry; `{4, ''}` for an update in mode `o` of an entry whose stored
/// owner line is not the one given (another user's, or none), which is left as it is: the
/// owner is read in the call that writes, so no other write comes in between. Before any
/// write, an update or an upsert checks every stored record of its keys: if one is not a
/// record whose owner and `created_at` can be kept (it must be the owner line, if any, then
/// this entry's head, then anything, then the tail with a real `created_at`, as the client's
/// full check of every read would demand; the data in between is replaced by the new entry's,
/// so it is not looked at), nothing is written: that key is answered `{0, old record}`, every
/// other `{3, ''}`. A key named twice is written twice, in order, the second keeping what the
/// first wrote.
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
local mode = ARGV[1]
local function arg(i, n) return ARGV[1 + (i - 1) * 6 + n] end
if mode ~= 'a' then
  -- Every stored record is checked before anything is written: one that cannot be kept
  -- refuses the batch whole.
  local out, refused = {}, false
  for i, key in ipairs(KEYS) do
    out[i] = {3, ''}
    local old = redis.call('GET', key)
    if old and not kept(old, arg(i, 2)) then
      out[i] = {0, old}
      refused = true
    end
  end
  if refused then return out end
end
local function write(key, i)
  local owner, head, data = arg(i, 1), arg(i, 2), arg(i, 3)
  local updated, fresh, given = arg(i, 4), arg(i, 5), arg(i, 6)
  local old = redis.call('GET', key)
  if old and mode == 'a' then
    -- This very add, sent again after its answer was lost, finds what it wrote.
    local same = owner .. head .. data
      .. ',"created_at":"' .. fresh .. '","updated_at":"' .. updated .. '"}'
    if old == same then return {1, fresh} end
    return {2, ''}
  end
  if not old and (mode == 'u' or mode == 'o') then return false end
  local created = fresh
  if old then
    -- Checked above, or written by this very call: it can be kept.
    local required = owner
    owner, created = kept(old, head)
    if mode == 'o' and owner ~= required then return {4, ''} end
    if given ~= '' then created = given end
  end
  redis.call('SET', key, owner .. head .. data
    .. ',"created_at":"' .. created .. '","updated_at":"' .. updated .. '"}')
  return {1, created}
end
local out = {}
for i, key in ipairs(KEYS) do out[i] = write(key, i) end
return out
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
    /// Replace an entry of the owner each entry of the batch names; an absent key is not
    /// found, another owner's entry (or one of none) is not the owner's.
    Owned,
}

/// Deletes the entry at KEYS[1] if its stored record starts with the owner line ARGV[1]
/// (`alice\n`): answers 1 removed, 0 absent, 2 not the owner's (another user's, or one of no
/// owner, whose record starts with `{`), left as it is. One call reads the owner and removes.
const DELETE_OWNED: &str = r"
local old = redis.call('GET', KEYS[1])
if not old then return 0 end
if string.sub(old, 1, #ARGV[1]) ~= ARGV[1] then return 2 end
redis.call('DEL', KEYS[1])
return 1
";

/// The write script, and the commands that run it.
pub(super) struct EntryScript {
    lua: Lua,
    delete_owned: Lua,
}

impl EntryScript {
    pub(super) fn new() -> EntryScript {
        EntryScript {
            lua: Lua::new(WRITE),
            delete_owned: Lua::new(DELETE_OWNED),
        }
    }

    /// The call deleting the entry at `key` if `owner` owns it, with the script's text (it
    /// works alone on any node); see [`deleted_owned`].
    pub(super) fn delete_owned(&self, key: &str, owner: &UserId) -> Cmd {
        (self.delete_owned.call(false))
            .arg(1)
            .arg(key)
            .arg(format!("{owner}\n"))
            .clone()
    }

    /// Loads the script: the first command of every pipeline of writes, so that the calls
    /// behind it can name it by its hash whatever the server had cached.
    pub(super) fn load(&self) -> Cmd {
        self.lua.load()
    }

    /// The call writing `batch` (each entry with its key and stamps) at `now`: by hash behind
    /// an [`EntryScript::load`] (`loaded`), or with the script's text, which works alone on
    /// any node. On a cluster, the keys must be of one slot.
    pub(super) fn call(
        &self,
        batch: &[(&str, Write<'_>)],
        mode: Mode,
        now: Timestamp,
        loaded: bool,
    ) -> Cmd {
        let mut cmd = self.lua.call(loaded);
        cmd.arg(batch.len());
        for (key, _) in batch {
            cmd.arg(*key);
        }
        cmd.arg(match mode {
            Mode::Add => "a",
            Mode::Update => "u",
            Mode::Upsert => "s",
            Mode::Owned => "o",
        });
        for &(_, (entry, stamps)) in batch {
            let owner = match entry.owner() {
                Some(owner) => format!("{owner}\n"),
                None => String::new(),
            };
            cmd.arg(owner)
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
        }
        cmd
    }
}

/// One entry to write, with its stamps.
pub(super) type Write<'a> = (&'a NewEntry, Stamps);

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

/// What the script's answer to the call writing `batch` at `now` (or the failure to get one)
/// means for each entry: the entry as now stored (once the replicas confirmed it), or why not;
/// and, when the script refused the batch whole, the position of the entry that stopped it.
pub(super) fn written(
    describe: &str,
    batch: &[Write<'_>],
    now: Timestamp,
    answer: Answer,
) -> Written {
    let mut refused = None;
    let read = |answer: redis::RedisResult<Value>| {
        let answer = answer.map_err(|e| write_fault(describe, e))?;
        let answers: Vec<Option<(u8, Bytes)>> =
            redis::from_redis_value(answer).map_err(|e| write_fault(describe, e.into()))?;
        if answers.len() != batch.len() {
            return Err(Error::new(
                ErrorKind::Internal,
                format!(
                    "the entry write script answered {} of {}",
                    answers.len(),
                    batch.len()
                ),
            ));
        }
        refused = answers.iter().position(|a| matches!(a, Some((0, _))));
        let culprit = refused.map(|at| batch[at].0.key());
        Ok((batch.iter().zip(answers))
            .map(|(&write, answer)| one(write, now, answer, culprit, batch.len()))
            .collect::<Vec<_>>())
    };
    let each = match answer.confirm_when(read, |each| each.iter().any(Result::is_ok)) {
        Ok(each) => each,
        Err(err) => vec![Err(err); batch.len()],
    };
    Written { each, refused }
}

/// What one entry's answer means; `culprit`: the entry whose stored record refused the batch
/// (of `len` entries), if one did.
fn one(
    (entry, stamps): Write<'_>,
    now: Timestamp,
    answer: Option<(u8, Bytes)>,
    culprit: Option<&EntryKey>,
    len: usize,
) -> Result<EntryJson> {
    let key = entry.key();
    let whole = |err: Error| match len {
        1 => err,
        _ => Error::new(
            err.kind(),
            format!("{}; nothing of this batch was written", err.message()),
        ),
    };
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
        Some((4, _)) => Err(match entry.owner() {
            Some(owner) => entry_not_owned(key, owner),
            None => Error::new(
                ErrorKind::Internal,
                format!("entry {key}: the write script answered 4 to a write of no owner"),
            ),
        }),
        // Left as it was: the full check says what is wrong with it.
        Some((0, old)) => Err(whole(stored_entry(key, old).err().unwrap_or_else(|| {
            Error::new(
                ErrorKind::Internal,
                format!("entry {key}: stored entry record is corrupt; it was left as it was"),
            )
        }))),
        Some((3, _)) => Err(whole(Error::new(
            ErrorKind::Internal,
            match culprit {
                Some(culprit) => format!(
                    "entry {key} was not written: the stored record of entry {culprit} is \
                     corrupt"
                ),
                None => format!("entry {key} was not written: its batch was refused"),
            },
        ))),
        Some((code, _)) => Err(Error::new(
            ErrorKind::Internal,
            format!("entry {key}: the write script answered {code}"),
        )),
        None => Err(entry_not_found(key)),
    }
}

/// Each entry's outcome of a batch, in batch order, and the position of the one whose stored
/// record refused the batch whole, if one did.
pub(super) struct Written {
    pub(super) each: Vec<Result<EntryJson>>,
    pub(super) refused: Option<usize>,
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

/// What the answer to [`EntryScript::delete_owned`] of `key` by `owner` means; a removal the
/// replicas did not confirm is of unknown outcome, a refusal or an absent entry is not.
pub(super) fn deleted_owned(
    describe: &str,
    key: &EntryKey,
    owner: &UserId,
    answer: Answer,
) -> Result<()> {
    let read = |answer: redis::RedisResult<Value>| {
        let answer = answer.map_err(|e| write_fault(describe, e))?;
        let code: i64 =
            redis::from_redis_value(answer).map_err(|e| write_fault(describe, e.into()))?;
        Ok(code)
    };
    match answer.confirm_when(read, |&code| code == 1)? {
        1 => Ok(()),
        0 => Err(entry_not_found(key)),
        2 => Err(entry_not_owned(key, owner)),
        code => Err(Error::new(
            ErrorKind::Internal,
            format!("entry {key}: the owned delete script answered {code}"),
        )),
    }
}
