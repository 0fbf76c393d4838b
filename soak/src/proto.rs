//! The lines a child writes on stdout, one event each.
//!
//! A worker announces an operation (`TRY`) before it starts and
//! acknowledges it (`ACK`) once the engine returned, so after a SIGKILL the
//! parent knows every acknowledged operation and, per thread, the one at
//! most in flight.

use std::fmt;

/// An operation a child thread runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// A set of key `k` of collection `c` in vbucket `vb` to value number
    /// `i`, durable or not.
    Set {
        /// The vbucket.
        vb: u16,
        /// The collection index (0 the default collection).
        c: u8,
        /// The key number.
        k: u16,
        /// The value's operation number.
        i: u64,
        /// A durable write.
        durable: bool,
    },
    /// A delete.
    Del {
        /// The vbucket.
        vb: u16,
        /// The collection index.
        c: u8,
        /// The key number.
        k: u16,
        /// The operation number.
        i: u64,
        /// A durable delete.
        durable: bool,
    },
    /// Delete a vbucket.
    DropVb {
        /// The vbucket.
        vb: u16,
    },
    /// Create a vbucket.
    CreateVb {
        /// The vbucket.
        vb: u16,
    },
    /// Apply a manifest: uid, and a bit per user collection that is open.
    Manifest {
        /// The manifest uid.
        uid: u64,
        /// Open user collections, one bit each.
        open: u32,
    },
}

/// One line of a child's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    /// The child warmed up and created its vbuckets.
    Ready,
    /// Thread `t` starts `op`.
    Try(u32, Op),
    /// Thread `t` finished `op`; `seqno` for sets and deletes (0 for a
    /// delete of a missing key, which changed nothing).
    Ack(u32, Op, u64),
    /// A compaction finished.
    Compacted,
    /// Counters: peak RSS in KiB, reads, reads checked.
    Stat {
        /// VmHWM of the child.
        rss_kb: u64,
        /// Reads done.
        reads: u64,
        /// Reads checked against the child's model.
        checks: u64,
    },
    /// A read that broke the model, or an operation that failed.
    Violation(String),
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Set {
                vb,
                c,
                k,
                i,
                durable,
            } => write!(f, "SET {vb} {c} {k} {i} {}", u8::from(durable)),
            Op::Del {
                vb,
                c,
                k,
                i,
                durable,
            } => write!(f, "DEL {vb} {c} {k} {i} {}", u8::from(durable)),
            Op::DropVb { vb } => write!(f, "DROPVB {vb}"),
            Op::CreateVb { vb } => write!(f, "CREATEVB {vb}"),
            Op::Manifest { uid, open } => write!(f, "MANIFEST {uid} {open}"),
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::Ready => write!(f, "READY"),
            Line::Try(t, op) => write!(f, "TRY {t} {op}"),
            Line::Ack(t, op, s) => write!(f, "ACK {t} {s} {op}"),
            Line::Compacted => write!(f, "COMPACTED"),
            Line::Stat {
                rss_kb,
                reads,
                checks,
            } => write!(f, "STAT {rss_kb} {reads} {checks}"),
            Line::Violation(s) => write!(f, "VIOLATION {s}"),
        }
    }
}

fn parse_op(w: &[&str]) -> Option<Op> {
    let n = |i: usize| w.get(i).and_then(|s| s.parse::<u64>().ok());
    let vb = || n(1).and_then(|v| u16::try_from(v).ok());
    Some(match *w.first()? {
        "SET" | "DEL" => {
            let (vb, c, k, i) = (
                vb()?,
                u8::try_from(n(2)?).ok()?,
                u16::try_from(n(3)?).ok()?,
                n(4)?,
            );
            let durable = n(5)? == 1;
            if w[0] == "SET" {
                Op::Set {
                    vb,
                    c,
                    k,
                    i,
                    durable,
                }
            } else {
                Op::Del {
                    vb,
                    c,
                    k,
                    i,
                    durable,
                }
            }
        }
        "DROPVB" => Op::DropVb { vb: vb()? },
        "CREATEVB" => Op::CreateVb { vb: vb()? },
        "MANIFEST" => Op::Manifest {
            uid: n(1)?,
            open: u32::try_from(n(2)?).ok()?,
        },
        _ => return None,
    })
}

impl Line {
    /// Parses a line; `None` for anything else (libtest chatter, logs).
    #[must_use]
    pub fn parse(s: &str) -> Option<Line> {
        let w: Vec<&str> = s.split(' ').collect();
        let n = |i: usize| w.get(i).and_then(|s| s.parse::<u64>().ok());
        match *w.first()? {
            "READY" => Some(Line::Ready),
            "COMPACTED" => Some(Line::Compacted),
            "TRY" => Some(Line::Try(u32::try_from(n(1)?).ok()?, parse_op(&w[2..])?)),
            "ACK" => Some(Line::Ack(
                u32::try_from(n(1)?).ok()?,
                parse_op(&w[3..])?,
                n(2)?,
            )),
            "STAT" => Some(Line::Stat {
                rss_kb: n(1)?,
                reads: n(2)?,
                checks: n(3)?,
            }),
            "VIOLATION" => Some(Line::Violation(
                s["VIOLATION ".len().min(s.len())..].to_owned(),
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip() {
        let ops = [
            Op::Set {
                vb: 3,
                c: 2,
                k: 17,
                i: 99,
                durable: true,
            },
            Op::Del {
                vb: 0,
                c: 0,
                k: 1,
                i: 5,
                durable: false,
            },
            Op::DropVb { vb: 7 },
            Op::CreateVb { vb: 7 },
            Op::Manifest {
                uid: 12,
                open: 0b101,
            },
        ];
        for op in ops {
            for line in [Line::Try(2, op), Line::Ack(1, op, 44)] {
                assert_eq!(Line::parse(&line.to_string()), Some(line));
            }
        }
        for line in [
            Line::Ready,
            Line::Compacted,
            Line::Stat {
                rss_kb: 1,
                reads: 2,
                checks: 3,
            },
            Line::Violation("vb:1 k2: found op9".into()),
        ] {
            assert_eq!(Line::parse(&line.to_string()), Some(line));
        }
        assert_eq!(Line::parse("test child ... "), None);
        assert_eq!(Line::parse("TRY x SET"), None);
    }
}
