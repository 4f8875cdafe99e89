//! The control protocol, typed: one `Request` and one `Reply` enum shared by the daemon's
//! server, the CLI, the dashboard and the metrics endpoint. The wire format is JSON lines,
//! protocol version 1 (see `control.rs` for the table); names only ever grow.

use serde::{de::MapAccess, Deserialize, Serialize};
use serde_json::{json, Value};

use crate::snapshot::{EventRecord, Snapshot};

pub const PROTOCOL_VERSION: u64 = 1;

/// A request, as the client sends it and as the server understood it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Version,
    /// The whole picture, under "snapshot". With `since` (the `seq` of an earlier reply on
    /// the same daemon), only what changed since then: see `Snapshot::delta`.
    Snapshot {
        #[serde(skip_serializing_if = "Option::is_none")]
        since: Option<u64>,
        /// The `instance` of the snapshot `since` came from; another daemon's gets a full one.
        #[serde(skip_serializing_if = "Option::is_none")]
        instance: Option<u64>,
        /// `false`: leave out each destination's `policy` (what the metrics endpoint asks for:
        /// with 10k destinations they are a third of a snapshot). Absent: included.
        #[serde(skip_serializing_if = "Option::is_none")]
        policy: Option<bool>,
    },
    /// The same snapshot under "status" (kept from the first release).
    Status,
    /// One page of the dashboard's table (see `table::Query`), under "snapshot": a snapshot
    /// whose `table` holds the page and whose `destinations` hold only `detail`'s status.
    Table {
        sort: crate::table::Sort,
        #[serde(skip_serializing_if = "String::is_empty")]
        filter: String,
        offset: usize,
        limit: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
        /// Events after this `seq` of the daemon `instance`.
        #[serde(skip_serializing_if = "Option::is_none")]
        events_after: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        instance: Option<u64>,
    },
    Events {
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        follow: bool,
    },
    /// Without `service`, every breaker of the destination (one per service where it lists
    /// services); with it, that service's only.
    Trip {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    Reset {
        name: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    Disable {
        name: String,
    },
    Enable {
        name: String,
    },
    Reload,
    /// A recording stream (`resilience record`): the header, then every line until the client
    /// goes away.
    Record,
}

impl Request {
    pub fn line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_default();
        s.push('\n');
        s
    }
}

pub const COMMANDS: &str =
    "version, snapshot, status, table, events, trip, reset, disable, enable, reload, record";

/// A JSON object's fields in order, duplicates kept so that they can be refused: with
/// `{"cmd":"version","cmd":"trip"}` a last-one-wins parser would trip a breaker.
struct Fields(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Fields;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Fields, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Fields(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Parse one request line; the error says what is wrong, for the client to show.
pub fn parse(line: &[u8]) -> Result<Request, String> {
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    if !v.is_object() {
        return Err("a request is a JSON object, e.g. {\"cmd\": \"status\"}".into());
    }
    let Fields(fields) = serde_json::from_slice(line).map_err(|e| format!("not JSON: {e}"))?;
    for (i, (k, _)) in fields.iter().enumerate() {
        if fields[..i].iter().any(|(o, _)| o == k) {
            return Err(format!("field {k:?} is given twice"));
        }
    }
    let get = |k: &str| fields.iter().find(|(n, _)| n == k).map(|(_, v)| v);
    let cmd = match get("cmd") {
        Some(Value::String(c)) => c.as_str(),
        Some(other) => return Err(format!("\"cmd\" must be a string, not {}", kind(other))),
        None => return Err("missing field \"cmd\"".into()),
    };
    let name = |word: &str| match get("name") {
        Some(Value::String(n)) => Ok(n.clone()),
        Some(other) => Err(format!(
            "{word}: \"name\" must be a string, not {}",
            kind(other)
        )),
        None => Err(format!("{word} needs a string field \"name\"")),
    };
    let service = |word: &str| match get("service") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "{word}: \"service\" must be a string, not {}",
            kind(other)
        )),
    };
    match cmd {
        "version" => Ok(Request::Version),
        "snapshot" => {
            let number = |k: &str| match get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
                Some(other) => Err(format!(
                    "snapshot: {k:?} must be a number from an earlier snapshot, not {}",
                    kind(other)
                )),
            };
            let policy = match get("policy") {
                None | Some(Value::Null) => None,
                Some(Value::Bool(b)) => Some(*b),
                Some(other) => {
                    return Err(format!(
                        "snapshot: \"policy\" must be true or false, not {}",
                        kind(other)
                    ))
                }
            };
            Ok(Request::Snapshot {
                since: number("since")?,
                instance: number("instance")?,
                policy,
            })
        }
        "status" => Ok(Request::Status),
        "table" => table(&get),
        "events" => match get("follow") {
            None => Ok(Request::Events { follow: false }),
            Some(Value::Bool(f)) => Ok(Request::Events { follow: *f }),
            Some(other) => Err(format!(
                "events: \"follow\" must be a bool, not {}",
                kind(other)
            )),
        },
        "trip" => Ok(Request::Trip {
            name: name(cmd)?,
            service: service(cmd)?,
        }),
        "reset" => Ok(Request::Reset {
            name: name(cmd)?,
            service: service(cmd)?,
        }),
        "disable" => Ok(Request::Disable { name: name(cmd)? }),
        "enable" => Ok(Request::Enable { name: name(cmd)? }),
        "reload" => Ok(Request::Reload),
        "record" => Ok(Request::Record),
        other => Err(format!("unknown command {other:?}; known: {COMMANDS}")),
    }
}

fn table<'a>(get: &dyn Fn(&str) -> Option<&'a Value>) -> Result<Request, String> {
    let number = |k: &str| match get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) if n.as_u64().is_some() => Ok(n.as_u64()),
        Some(other) => Err(format!(
            "table: {k:?} must be a whole number, not {}",
            kind(other)
        )),
    };
    let text = |k: &str| match get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(format!(
            "table: {k:?} must be a string, not {}",
            kind(other)
        )),
    };
    let sort = match text("sort")? {
        None => crate::table::Sort::Policy,
        Some(k) => crate::table::Sort::from_key(&k).ok_or_else(|| {
            format!(
                "table: unknown sort {k:?}; known: policy, state, name, attempts, failures, \
                 rejected, latency"
            )
        })?,
    };
    let size = |k: &str, default: u64| -> Result<usize, String> {
        Ok(usize::try_from(number(k)?.unwrap_or(default)).unwrap_or(usize::MAX))
    };
    Ok(Request::Table {
        sort,
        filter: text("filter")?.unwrap_or_default(),
        offset: size("offset", 0)?,
        limit: size("limit", 100)?.min(crate::table::MAX_LIMIT),
        detail: text("detail")?,
        events_after: number("events_after")?,
        instance: number("instance")?,
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The daemon's answer to one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Version(String),
    /// `field` is "snapshot" or "status", as asked.
    Snapshot {
        field: &'static str,
        snapshot: Box<Snapshot>,
    },
    Events(Vec<EventRecord>),
    /// The header of a recording stream.
    Recording(Box<crate::recording::Header>),
    Message(String),
    Error(String),
}

impl Reply {
    pub fn to_json(&self) -> Value {
        let ok = |field: &str, v: Value| json!({"v": PROTOCOL_VERSION, "ok": true, field: v});
        match self {
            Reply::Version(v) => ok("version", json!(v)),
            Reply::Snapshot { field, snapshot } => match serde_json::to_value(snapshot) {
                Ok(v) => ok(field, v),
                Err(e) => error(e.to_string()),
            },
            Reply::Events(ev) => ok("events", serde_json::to_value(ev).unwrap_or_default()),
            Reply::Recording(h) => ok("recording", serde_json::to_value(h).unwrap_or_default()),
            Reply::Message(m) => ok("message", json!(m)),
            Reply::Error(e) => error(e.clone()),
        }
    }

    /// One line of the wire format, newline included. A snapshot is written straight to
    /// text (a `Value` tree of a big snapshot would cost ten times as much).
    pub fn line(&self) -> String {
        match self {
            Reply::Snapshot { field, snapshot } => match serde_json::to_string(snapshot) {
                Ok(s) => {
                    let mut out = String::with_capacity(s.len() + 32);
                    out.push_str(&format!(
                        "{{\"v\":{PROTOCOL_VERSION},\"ok\":true,\"{field}\":"
                    ));
                    out.push_str(&s);
                    out.push_str("}\n");
                    out
                }
                Err(e) => line(&error(e.to_string())),
            },
            other => line(&other.to_json()),
        }
    }
}

pub fn error(message: String) -> Value {
    json!({"v": PROTOCOL_VERSION, "ok": false, "error": message})
}

pub fn line(v: &Value) -> String {
    let mut out = v.to_string();
    out.push('\n');
    out
}

/// One line of a `record` stream after the header.
pub fn record_line(l: &crate::recording::Line) -> String {
    line(&json!({"v": PROTOCOL_VERSION, "record": l}))
}

/// One line of an `events` stream after the backlog.
pub fn event_line(e: &EventRecord) -> String {
    line(&json!({"v": PROTOCOL_VERSION, "event": e}))
}

pub fn lagged_line(n: u64) -> String {
    line(&json!({"v": PROTOCOL_VERSION, "lagged": n}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_or_say_what_is_wrong() {
        assert_eq!(parse(br#"{"cmd":"version"}"#), Ok(Request::Version));
        assert_eq!(
            parse(br#"{"cmd":"events","follow":true}"#),
            Ok(Request::Events { follow: true })
        );
        assert_eq!(
            parse(br#"{"cmd":"disable","name":"db"}"#),
            Ok(Request::Disable { name: "db".into() })
        );
        assert_eq!(
            parse(br#"{"cmd":"snapshot","since":42}"#),
            Ok(Request::Snapshot {
                since: Some(42),
                instance: None,
                policy: None,
            })
        );
        assert_eq!(
            parse(br#"{"cmd":"snapshot","policy":false}"#),
            Ok(Request::Snapshot {
                since: None,
                instance: None,
                policy: Some(false),
            })
        );
        assert!(parse(br#"{"cmd":"snapshot","policy":"no"}"#).is_err());
        assert_eq!(
            parse(br#"{"cmd":"table","limit":5000}"#),
            Ok(Request::Table {
                sort: crate::table::Sort::Policy,
                filter: String::new(),
                offset: 0,
                limit: crate::table::MAX_LIMIT,
                detail: None,
                events_after: None,
                instance: None,
            })
        );
        let cases: [(&[u8], &str); 12] = [
            (
                br#"{"cmd":"table","sort":"p99"}"#,
                "table: unknown sort \"p99\"; known: policy",
            ),
            (
                br#"{"cmd":"table","offset":"10"}"#,
                "table: \"offset\" must be a whole number, not a string",
            ),
            (br#"{"cmd":"stat"#, "not JSON: EOF while parsing"),
            (b"[1,2]", "a request is a JSON object"),
            (br#"{"name":"x"}"#, "missing field \"cmd\""),
            (br#"{"cmd":5}"#, "\"cmd\" must be a string, not a number"),
            (br#"{"cmd":"trip"}"#, "trip needs a string field \"name\""),
            (
                br#"{"cmd":"reset","name":["x"]}"#,
                "reset: \"name\" must be a string, not an array",
            ),
            (
                br#"{"cmd":"events","follow":"yes"}"#,
                "events: \"follow\" must be a bool, not a string",
            ),
            (
                br#"{"cmd":"explode"}"#,
                "unknown command \"explode\"; known: version",
            ),
            (
                br#"{"cmd":"version","cmd":"trip","name":"x"}"#,
                "field \"cmd\" is given twice",
            ),
            (
                br#"{"cmd":"snapshot","since":-1}"#,
                "snapshot: \"since\" must be a number from an earlier snapshot",
            ),
        ];
        for (input, want) in cases {
            let got = parse(input).expect_err("must be refused");
            assert!(
                got.starts_with(want),
                "{}: got {got:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn requests_round_trip_through_their_own_wire_form() {
        for r in [
            Request::Version,
            Request::Snapshot {
                since: None,
                instance: None,
                policy: None,
            },
            Request::Snapshot {
                since: Some(7),
                instance: Some(99),
                policy: Some(false),
            },
            Request::Status,
            Request::Events { follow: true },
            Request::Events { follow: false },
            Request::Trip {
                name: "a".into(),
                service: None,
            },
            Request::Reset {
                name: "a".into(),
                service: Some("s".into()),
            },
            Request::Disable { name: "a".into() },
            Request::Enable { name: "a".into() },
            Request::Reload,
            Request::Record,
            Request::Table {
                sort: crate::table::Sort::Latency,
                filter: "pay".into(),
                offset: 40,
                limit: 60,
                detail: Some("db@checkout".into()),
                events_after: Some(12),
                instance: Some(5),
            },
            Request::Table {
                sort: crate::table::Sort::Policy,
                filter: String::new(),
                offset: 0,
                limit: 100,
                detail: None,
                events_after: None,
                instance: None,
            },
        ] {
            assert_eq!(parse(r.line().as_bytes()), Ok(r.clone()), "{}", r.line());
        }
    }
}
