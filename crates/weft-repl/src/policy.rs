//! Durability policies: how many replicas must hold a write before it is acknowledged, and
//! what happens when they do not in time.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How many replicas must hold a write (durably) before it is acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// Acknowledged once durable on the primary; replicas follow when they can.
    Async,
    /// Acknowledged once durable on the primary and on this many replicas.
    SemiSync(usize),
    /// Acknowledged once durable on the primary and every replica it knows (every replica
    /// that has connected since the primary started, or `Config::replicas` if set).
    Sync,
}

/// What a write does when its replicas do not confirm it within the policy's timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnTimeout {
    /// Keep waiting (until the client gives up; a cancelled wait is never a success).
    Block,
    /// Fail with `StoreError::Unconfirmed`: durable and visible on the primary, not
    /// confirmed on enough replicas.
    Fail,
    /// Acknowledge, and run the node asynchronously (an event, a metric and a log line) until
    /// enough replicas have caught up again; then back to the policy by itself. This is
    /// MySQL's semi-sync fallback, made visible.
    Degrade,
}

/// A durability policy: a level, a timeout and what happens when it runs out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// How many replicas.
    pub level: Level,
    /// How long a write waits for them.
    #[serde(with = "millis")]
    pub timeout: Duration,
    /// What then.
    pub on_timeout: OnTimeout,
}

mod millis {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            level: Level::Async,
            timeout: Duration::from_secs(2),
            on_timeout: OnTimeout::Fail,
        }
    }
}

impl Policy {
    /// Async: acknowledged after the primary's fsync.
    pub fn asynchronous() -> Self {
        Policy::default()
    }

    /// Semi-sync on `k` replicas, failing after `timeout`.
    pub fn semi_sync(k: usize, timeout: Duration) -> Self {
        Policy {
            level: Level::SemiSync(k),
            timeout,
            on_timeout: OnTimeout::Fail,
        }
    }

    /// The same policy with another timeout behaviour.
    pub fn on_timeout(self, on_timeout: OnTimeout) -> Self {
        Policy { on_timeout, ..self }
    }

    /// Replicas a write needs, given how many the primary knows (for `sync`).
    pub fn required(&self, known: usize) -> usize {
        match self.level {
            Level::Async => 0,
            Level::SemiSync(k) => k,
            Level::Sync => known,
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.level {
            Level::Async => write!(f, "async")?,
            Level::SemiSync(k) => write!(f, "semi-sync={k}")?,
            Level::Sync => write!(f, "sync")?,
        }
        let on = match self.on_timeout {
            OnTimeout::Block => "block",
            OnTimeout::Fail => "fail",
            OnTimeout::Degrade => "degrade",
        };
        write!(f, ";timeout={}ms;on-timeout={on}", self.timeout.as_millis())
    }
}

/// The syntax of `--durability` and of the `weft-durability` header.
pub const SYNTAX: &str = "async | semi-sync=K | sync, then optionally ;timeout=DURATION (e.g. 500ms, 2s) and ;on-timeout=block|fail|degrade";

impl FromStr for Policy {
    type Err = String;
    /// `async`, `semi-sync=2`, `sync`, each optionally followed by `;timeout=500ms` and
    /// `;on-timeout=block|fail|degrade` (defaults: 2s, fail).
    fn from_str(s: &str) -> Result<Self, String> {
        let mut p = Policy::default();
        let mut parts = s.split(';').map(str::trim);
        let level = parts.next().unwrap_or_default();
        p.level = match level.split_once('=') {
            None if level == "async" => Level::Async,
            None if level == "sync" => Level::Sync,
            Some(("semi-sync", k)) => match k.trim().parse::<usize>() {
                Ok(k) if k >= 1 => Level::SemiSync(k),
                _ => {
                    return Err(format!(
                        "semi-sync needs a replica count >= 1, got {k:?}; allowed: {SYNTAX}"
                    ))
                }
            },
            _ => {
                return Err(format!(
                    "unknown durability level {level:?}; allowed: {SYNTAX}"
                ))
            }
        };
        for part in parts.filter(|p| !p.is_empty()) {
            match part.split_once('=') {
                Some(("timeout", d)) => p.timeout = parse_duration(d)?,
                Some(("on-timeout", "block")) => p.on_timeout = OnTimeout::Block,
                Some(("on-timeout", "fail")) => p.on_timeout = OnTimeout::Fail,
                Some(("on-timeout", "degrade")) => p.on_timeout = OnTimeout::Degrade,
                _ => {
                    return Err(format!(
                        "unknown durability option {part:?}; allowed: {SYNTAX}"
                    ))
                }
            }
        }
        Ok(p)
    }
}

/// `250ms`, `2s`, `1m`, or a plain number of milliseconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "ms"),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?}; use e.g. 250ms, 2s, 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration unit in {s:?}; use ms, s or m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_and_print_back() {
        for s in [
            "async",
            "sync",
            "semi-sync=2",
            "semi-sync=1;timeout=500ms;on-timeout=degrade",
            "sync;on-timeout=block;timeout=3s",
        ] {
            let p: Policy = s.parse().unwrap();
            let again: Policy = p.to_string().parse().unwrap();
            assert_eq!(p, again, "{s}");
        }
        let p: Policy = "semi-sync=2;timeout=500ms;on-timeout=degrade"
            .parse()
            .unwrap();
        assert_eq!(p.level, Level::SemiSync(2));
        assert_eq!(p.timeout, Duration::from_millis(500));
        assert_eq!(p.on_timeout, OnTimeout::Degrade);
        assert_eq!(p.required(5), 2);
        assert_eq!("sync".parse::<Policy>().unwrap().required(3), 3);
        assert_eq!(Policy::default().required(3), 0);
    }

    #[test]
    fn bad_policies_say_what_is_allowed() {
        for s in [
            "",
            "semi-sync",
            "semi-sync=0",
            "semi-sync=x",
            "quorum",
            "async;timeout=5h",
            "async;x=1",
        ] {
            let e = s.parse::<Policy>().unwrap_err();
            assert!(e.contains("allowed") || e.contains("duration"), "{s}: {e}");
        }
    }
}
