//! The write concern of both Redis backends: a write is acknowledged only once the replicas
//! [`StoreOptions::wait_replicas`] asks for have confirmed it with `WAIT`.
//!
//! Every write, single or batch, is sent as one pipeline ([`Writes`]): the write commands,
//! then `WAIT n timeout`. Together, because `WAIT` counts the replication offset of the last
//! write of *its own connection*: sent apart, a reconnect in between would leave it on a
//! connection that wrote nothing, and it would answer at once that every replica has it. In
//! one pipeline on one connection it always follows the writes it confirms. Other writes
//! that share the multiplexed connection may come between; `WAIT` then waits for theirs too,
//! which only confirms ours later. A batch on a cluster is one such pipeline per master.
//!
//! `WAIT` answers how many replicas acknowledged: `n` or more, and each write is what it
//! answered; fewer (none, or some), and each write that changed something is
//! [`ErrorKind::OutcomeUnknown`] ([`Answer::confirm_when`]): the master applied it, and a
//! failover before it reaches a replica would lose it. It is never reported as done.
//!
//! `WAIT` holds its connection on the server until it answers, so the writes queued behind
//! it on the same connection wait for it: with the replicas up that is one replication round
//! trip per pipeline; with too few, every write on it takes the whole timeout, and the
//! client's response timeout for writes is the read timeout plus the wait.

use std::time::Duration;

use redis::{Cmd, Pipeline, RedisResult, Value};

use crate::error::{Error, ErrorKind, Result};
use crate::store::StoreOptions;

/// How many replicas must confirm each write, and how long to wait for them.
#[derive(Debug, Clone)]
pub(super) struct WriteConcern {
    replicas: u32,
    timeout: Duration,
}

impl WriteConcern {
    /// The concern `options` ask for; `None` when writes do not wait.
    pub(super) fn new(options: &StoreOptions) -> Option<WriteConcern> {
        match options.wait_replicas_value() {
            0 => None,
            replicas => Some(WriteConcern {
                replicas,
                timeout: options.wait_timeout_value(),
            }),
        }
    }

    /// `WAIT n ms`, never `WAIT n 0`, which would wait for ever.
    fn wait(&self) -> Cmd {
        let ms = u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX);
        redis::cmd("WAIT").arg(self.replicas).arg(ms.max(1)).clone()
    }

    /// What `WAIT` answered means for the writes before it: `None` when enough replicas
    /// confirmed them, else the error each write that changed something is answered with.
    fn verdict(&self, describe: &str, answer: Option<Value>) -> Option<Error> {
        let n = self.replicas;
        let why = match answer {
            Some(Value::Int(confirmed)) if confirmed >= i64::from(n) => return None,
            Some(Value::Int(confirmed)) => format!(
                "only {confirmed} of the {n} replicas required (--wait-replicas) confirmed it \
                 within {:?} (--wait-timeout)",
                self.timeout
            ),
            Some(Value::ServerError(err)) => format!("WAIT was refused ({err})"),
            other => format!("WAIT answered {other:?}"),
        };
        Some(Error::new(
            ErrorKind::OutcomeUnknown,
            format!(
                "Redis at {describe} applied the write but {why}; a failover may lose it, \
                 so it is not acknowledged"
            ),
        ))
    }
}

/// A pipeline of writes: maybe a prelude whose answers are dropped (a script load), the
/// writes, and the `WAIT` of the concern.
pub(super) struct Writes<'a> {
    pipe: Pipeline,
    skip: usize,
    writes: usize,
    concern: Option<&'a WriteConcern>,
}

impl<'a> Writes<'a> {
    pub(super) fn new(
        prelude: Option<Cmd>,
        writes: impl IntoIterator<Item = Cmd>,
        concern: Option<&'a WriteConcern>,
    ) -> Writes<'a> {
        let mut pipe = redis::pipe();
        let skip = usize::from(prelude.is_some());
        if let Some(prelude) = prelude {
            pipe.add_command(prelude);
        }
        for cmd in writes {
            pipe.add_command(cmd);
        }
        let writes = pipe.len() - skip;
        if let Some(concern) = concern {
            pipe.add_command(concern.wait());
        }
        Writes {
            pipe,
            skip,
            writes,
            concern,
        }
    }

    /// The pipeline to send, whole, on one connection.
    pub(super) fn pipe(&self) -> &Pipeline {
        &self.pipe
    }

    /// The number of commands in the pipeline.
    pub(super) fn len(&self) -> usize {
        self.pipe.len()
    }

    /// Each write's answer, in order, from the `values` the server answered the pipeline
    /// with: a command the server refused fails alone.
    pub(super) fn answers(&self, describe: &str, values: Vec<Value>) -> Vec<Answer> {
        let mut values = values.into_iter().skip(self.skip);
        let writes: Vec<Value> = values.by_ref().take(self.writes).collect();
        let unconfirmed = self
            .concern
            .and_then(|concern| concern.verdict(describe, values.next()));
        let mut answers: Vec<Answer> = (writes.into_iter())
            .map(|value| Answer {
                value: Ok(match value {
                    Value::ServerError(err) => Err(err.into()),
                    value => Ok(value),
                }),
                unconfirmed: unconfirmed.clone(),
            })
            .collect();
        // A server answers every command of a pipeline; if one did not, say so.
        while answers.len() < self.writes {
            let lost = redis::RedisError::from((
                redis::ErrorKind::Io,
                "the pipeline of writes was answered in part",
            ));
            answers.push(Answer::lost(lost));
        }
        answers
    }
}

/// One write's answer, and whether the replicas confirmed it.
#[derive(Debug, Clone)]
pub(super) struct Answer {
    /// What the server answered the write, or the failure to get an answer; `Err`: the write
    /// was never sent, and why.
    value: Result<RedisResult<Value>>,
    unconfirmed: Option<Error>,
}

impl Answer {
    /// A write that got no answer (the pipeline was lost); what `value` says is all there is.
    pub(super) fn lost(err: redis::RedisError) -> Answer {
        Answer {
            value: Ok(Err(err)),
            unconfirmed: None,
        }
    }

    /// A write that was never sent (no connection to its node could be made), failed with
    /// `err`: unlike a lost one, it cannot have been applied.
    pub(super) fn unsent(err: Error) -> Answer {
        Answer {
            value: Err(err),
            unconfirmed: None,
        }
    }

    /// The server's answer to the write itself; `None` if it was never sent.
    pub(super) fn value(&self) -> Option<&RedisResult<Value>> {
        self.value.as_ref().ok()
    }

    /// What the write did, as `read` makes of its answer; but one that `changed` the store
    /// and that the replicas did not confirm is of unknown outcome. A write that changed
    /// nothing (a conflict, a user not found, an existing user handed back) is answered as
    /// such: there is nothing for a failover to lose.
    pub(super) fn confirm_when<T>(
        self,
        read: impl FnOnce(RedisResult<Value>) -> Result<T>,
        changed: impl FnOnce(&T) -> bool,
    ) -> Result<T> {
        // A write never sent answers why.
        let value = self.value?;
        match (read(value), self.unconfirmed) {
            (Ok(done), Some(err)) if changed(&done) => Err(err),
            (result, _) => result,
        }
    }

    /// [`Answer::confirm_when`] for a write that changed the store whenever it succeeded.
    pub(super) fn confirm<T>(
        self,
        read: impl FnOnce(RedisResult<Value>) -> Result<T>,
    ) -> Result<T> {
        self.confirm_when(read, |_| true)
    }
}

/// The one answer of a pipeline of one write.
pub(super) fn one(answers: Vec<Answer>) -> Answer {
    answers.into_iter().next().unwrap_or_else(|| {
        Answer::lost(redis::RedisError::from((
            redis::ErrorKind::Io,
            "a write was not answered",
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn concern(n: u32) -> WriteConcern {
        WriteConcern::new(&StoreOptions::new().wait_replicas(n)).unwrap()
    }

    fn read(value: RedisResult<Value>) -> Result<i64> {
        match value {
            Ok(Value::Int(n)) => Ok(n),
            _ => Err(Error::new(ErrorKind::Conflict, "refused")),
        }
    }

    #[test]
    fn off_sends_no_wait() {
        assert!(WriteConcern::new(&StoreOptions::new()).is_none());
        let writes = Writes::new(None, [redis::cmd("SET")], None);
        assert_eq!(writes.len(), 1);
        let answers = writes.answers("r", vec![Value::Int(1)]);
        assert_eq!(one(answers).confirm(read).unwrap(), 1);
    }

    #[test]
    fn fewer_replicas_than_asked_leave_a_change_unknown() {
        let two = concern(2);
        let writes = Writes::new(
            Some(redis::cmd("SCRIPT")),
            [redis::cmd("SET"), redis::cmd("SET"), redis::cmd("DEL")],
            Some(&two),
        );
        assert_eq!(writes.len(), 5);
        let okay = |n| vec![Value::Okay, Value::Int(1), Value::Int(7), Value::Int(0), n];
        // Enough replicas: each write is what it answered.
        for n in [2, 3] {
            let answers = writes.answers("r", okay(Value::Int(n)));
            let got: Vec<i64> = answers
                .into_iter()
                .map(|a| a.confirm(read).unwrap())
                .collect();
            assert_eq!(got, [1, 7, 0]);
        }
        // Some, none, or a refused WAIT: every change unknown, never done.
        let refused =
            redis::parse_redis_value(b"-ERR WAIT cannot be used with replica instances\r\n")
                .unwrap();
        for wait in [Value::Int(1), Value::Int(0), refused] {
            let mut answers = writes.answers("r", okay(wait)).into_iter();
            let err = answers.next().unwrap().confirm(read).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::OutcomeUnknown, "{err}");
            assert!(err.to_string().contains("a failover may lose it"), "{err}");
            assert!(answers.next().unwrap().confirm(read).is_err());
            // A delete that removed nothing changed nothing.
            let nothing = answers.next().unwrap().confirm_when(read, |&n| n > 0);
            assert_eq!(nothing.unwrap(), 0);
        }
        let one_of_two = writes.answers("r", okay(Value::Int(1)));
        let err = one(one_of_two).confirm(read).unwrap_err();
        assert!(
            err.to_string().contains("only 1 of the 2 replicas"),
            "{err}"
        );
        // A refusal stays a refusal.
        let answers = writes.answers("r", vec![Value::Okay, Value::Nil, Value::Nil, Value::Nil]);
        let err = one(answers).confirm(read).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Conflict);
    }

    #[test]
    fn a_write_never_sent_is_its_error() {
        let err = Error::new(ErrorKind::Unavailable, "node down");
        let unsent = Answer::unsent(err);
        assert!(unsent.value().is_none());
        let said = unsent.confirm(read).unwrap_err();
        assert_eq!(said.kind(), ErrorKind::Unavailable, "{said}");
        let lost = redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut));
        assert!(Answer::lost(lost).value().is_some_and(|v| v.is_err()));
    }

    #[test]
    fn wait_never_waits_for_ever() {
        let options = StoreOptions::new()
            .wait_replicas(1)
            .wait_timeout(Duration::from_micros(10));
        let wait = WriteConcern::new(&options).unwrap().wait();
        assert_eq!(wait.args_iter().count(), 3);
        let packed = String::from_utf8(wait.get_packed_command()).unwrap();
        assert!(packed.ends_with("$1\r\n1\r\n$1\r\n1\r\n"), "{packed:?}");
    }
}
