//! Carries out the key-value operation each text message asks for and
//! answers with its outcome, one line:
//!
//! | message | answer |
//! | --- | --- |
//! | `open STORE` | `ok` or `error ...` |
//! | `set STORE KEY VALUE` | `ok` or `error ...` |
//! | `get STORE KEY` | `value VALUE`, `none` or `error ...` |
//! | `del STORE KEY` | `ok` or `error ...` |
//! | `incr STORE KEY DELTA` | `ok N` or `error ...` |
//! | `cas STORE KEY EXPECTED NEW` | `swapped`, `conflict` or `error ...` |
//! | `fill STORE PREFIX COUNT VALUE` | `filled N` or `filled N error ...` |
//!
//! A KEY or VALUE written `#N` is N bytes of `k` or `v`; an EXPECTED of
//! `-` is "no value". `fill` sets `PREFIX0`, `PREFIX1`, ... to VALUE until
//! COUNT are set or one fails. Every error is the SDK's error text, so a
//! test sees what a flow would.

use wsflow_sdk::kv::{KvError, Store};
use wsflow_sdk::{Connection, Event, Flow};

struct Kv;

/// `#N` as N bytes of `fill`, anything else as itself.
fn expand(word: &str, fill: char) -> String {
    match word.strip_prefix('#').and_then(|n| n.parse::<usize>().ok()) {
        Some(n) => std::iter::repeat_n(fill, n).collect(),
        None => word.to_owned(),
    }
}

fn answer(words: &[&str]) -> Result<String, KvError> {
    let store = || Store::open(words[1]);
    let key = || expand(words[2], 'k');
    let value = |i: usize| expand(words[i], 'v');
    Ok(match words {
        ["open", _] => {
            store()?;
            "ok".to_owned()
        }
        ["set", _, _, _] => {
            store()?.set(&key(), value(3).as_bytes())?;
            "ok".to_owned()
        }
        ["get", _, _] => match store()?.get(&key())? {
            Some(value) => format!("value {}", String::from_utf8_lossy(&value)),
            None => "none".to_owned(),
        },
        ["del", _, _] => {
            store()?.delete(&key())?;
            "ok".to_owned()
        }
        ["incr", _, _, delta] => {
            let delta = delta.parse().unwrap_or(1);
            format!("ok {}", store()?.increment(&key(), delta)?)
        }
        ["cas", _, _, expected, _] => {
            let expected = (*expected != "-").then(|| value(3));
            let swapped = store()?.compare_and_swap(
                &key(),
                expected.as_deref().map(str::as_bytes),
                value(4).as_bytes(),
            )?;
            if swapped { "swapped" } else { "conflict" }.to_owned()
        }
        ["fill", _, prefix, count, _] => {
            let store = store()?;
            let count: usize = count.parse().unwrap_or(0);
            let value = value(4);
            for i in 0..count {
                if let Err(error) = store.set(&format!("{prefix}{i}"), value.as_bytes()) {
                    return Ok(format!("filled {i} error {error}"));
                }
            }
            format!("filled {count}")
        }
        _ => format!("error unknown command: {}", words.join(" ")),
    })
}

impl Flow for Kv {
    fn handle(event: Event, conn: &Connection) -> wsflow_sdk::Result {
        let text = event.text().unwrap_or_default();
        let words: Vec<&str> = text.split(' ').collect();
        let reply = answer(&words).unwrap_or_else(|error| format!("error {error}"));
        conn.send_text(&reply)?;
        Ok(())
    }
}

wsflow_sdk::export!(Kv);
