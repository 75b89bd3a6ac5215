//! `corrosion kv get|put|delete|export|import`: Consul's KV from the command
//! line, as `consul kv` does it (same flags, same messages, and `export`'s
//! JSON byte for byte as `consul kv export` writes it, so a tree moves from
//! Consul with `consul kv export | corrosion kv import -`).
//!
//! Consul's single-dash long flags (`-recurse`, `-keys`, `-flags=3`) are
//! accepted: [`consul_style_flags`] rewrites them before parsing.

#![allow(clippy::print_stdout, reason = "command output")]

use std::io::{Read, Write};

use anyhow::Context;
use base64::Engine;
use corro_client::Client;
use serde::{Deserialize, Serialize};

/// Rewrites Consul's single-dash long flags after `kv` (`-recurse`,
/// `-flags=3`) into the double-dash form the parser knows; `-` alone (stdin)
/// and anything after `--` stay as they are.
pub(crate) fn consul_style_flags(args: Vec<String>) -> Vec<String> {
    let Some(at) = args.iter().position(|a| a == "kv") else {
        return args;
    };
    // Only when `kv` is the subcommand: every argument before it is a flag
    // of the binary itself or a flag's value.
    let is_subcommand = (1..at).all(|i| args[i].starts_with('-') || args[i - 1].starts_with('-'));
    if !is_subcommand {
        return args;
    }
    // After `kv` and its subcommand, flags until the first positional
    // argument (as Go's flag package: `kv put k -Xmx512m` stores the
    // value `-Xmx512m`).
    let mut out = Vec::with_capacity(args.len());
    let mut done = false;
    for (i, a) in args.into_iter().enumerate() {
        if i <= at + 1 || done {
            out.push(a);
            continue;
        }
        if a == "--" || !a.starts_with('-') || a == "-" {
            done = true;
            out.push(a);
            continue;
        }
        let long = a.len() > 2
            && a.starts_with('-')
            && !a.starts_with("--")
            && a.as_bytes()[1].is_ascii_alphabetic()
            && a.as_bytes()[2].is_ascii_alphabetic();
        if long {
            out.push(format!("-{a}"));
        } else {
            out.push(a);
        }
    }
    out
}

/// One entry of `consul kv export`'s JSON.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub(crate) struct Exported {
    key: String,
    flags: u64,
    value: String,
}

/// An entry of the agent's `?recurse` answer.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Entry {
    key: String,
    flags: u64,
    value: Option<String>,
}

fn decode_value(v: Option<&str>) -> anyhow::Result<Vec<u8>> {
    match v {
        None | Some("") => Ok(Vec::new()),
        Some(s) => base64::engine::general_purpose::STANDARD
            .decode(s)
            .context("a value is not valid base64"),
    }
}

/// Strips the leading `/` Consul's CLI strips ("pairs cannot start with a
/// /"), then checks the key as the agent will, before anything is sent (a
/// `a/..` would otherwise be resolved by the HTTP client into another key).
fn clean(key: &str) -> anyhow::Result<&str> {
    let key = key.strip_prefix('/').unwrap_or(key);
    if !key.is_empty() {
        corro_consul_api::validate_kv_key(key).map_err(|m| anyhow::anyhow!("{key:?}: {m}"))?;
    }
    Ok(key)
}

/// `kv get`: the value as is; `-recurse`: `key:value` lines; `-keys`: the
/// keys under the prefix, folders rolled up at `-separator` (default `/`,
/// empty for none).
pub(crate) async fn get(
    client: &Client,
    key: &str,
    recurse: bool,
    keys: bool,
    separator: &str,
) -> anyhow::Result<()> {
    let key = clean(key)?;
    let mut out = std::io::stdout().lock();
    if keys {
        let q = if separator.is_empty() {
            "keys".to_string()
        } else {
            let sep: String = form_urlencoded::byte_serialize(separator.as_bytes()).collect();
            format!("keys&separator={sep}")
        };
        let body = client.kv_get(key, &q).await?.unwrap_or_default();
        let list: Vec<String> = serde_json::from_slice(&body).unwrap_or_default();
        for k in list {
            writeln!(out, "{k}")?;
        }
        return Ok(());
    }
    if recurse {
        let Some(body) = client.kv_get(key, "recurse").await? else {
            return Ok(());
        };
        let entries: Vec<Entry> =
            serde_json::from_slice(&body).context("decoding the agent's answer")?;
        for e in entries {
            let v = decode_value(e.value.as_deref())?;
            out.write_all(e.key.as_bytes())?;
            out.write_all(b":")?;
            out.write_all(&v)?;
            out.write_all(b"\n")?;
        }
        return Ok(());
    }
    if key.is_empty() {
        anyhow::bail!("Missing KEY argument");
    }
    match client.kv_get(key, "raw").await? {
        Some(v) => {
            out.write_all(&v)?;
            out.write_all(b"\n")?;
            Ok(())
        }
        None => anyhow::bail!("No key exists at: {key}"),
    }
}

/// `kv put KEY [VALUE|@file|-]`.
pub(crate) async fn put(
    client: &Client,
    key: &str,
    value: Option<&str>,
    flags: u64,
) -> anyhow::Result<()> {
    let key = clean(key)?;
    if key.is_empty() {
        anyhow::bail!("Missing KEY argument");
    }
    let bytes = match value {
        None => Vec::new(),
        Some("-") => {
            let mut b = Vec::new();
            std::io::stdin()
                .read_to_end(&mut b)
                .context("reading the value from stdin")?;
            b
        }
        Some(v) if v.starts_with('@') => {
            std::fs::read(&v[1..]).with_context(|| format!("reading the value from {}", &v[1..]))?
        }
        Some(v) => v.as_bytes().to_vec(),
    };
    client
        .kv_put(key, bytes, flags)
        .await
        .with_context(|| format!("failed writing data: {key}"))?;
    println!("Success! Data written to: {key}");
    Ok(())
}

/// `kv delete [-recurse] KEY`; deleting every key needs `-recurse -all`.
pub(crate) async fn delete(
    client: &Client,
    key: Option<&str>,
    recurse: bool,
    all: bool,
) -> anyhow::Result<()> {
    let key = clean(key.unwrap_or(""))?;
    if key.is_empty() {
        if !recurse {
            anyhow::bail!("Missing KEY argument");
        }
        if !all {
            anyhow::bail!(
                "Error! An empty prefix with -recurse deletes every key in the KV store; pass -all as well to do that"
            );
        }
    }
    client
        .kv_delete(key, recurse)
        .await
        .with_context(|| format!("did not delete {key}"))?;
    if recurse {
        println!("Success! Deleted keys with prefix: {key}");
    } else {
        println!("Success! Deleted key: {key}");
    }
    Ok(())
}

/// Encodes entries as `consul kv export` does: Go's `json.MarshalIndent`
/// with a tab, which also escapes `<`, `>`, `&`, U+2028 and U+2029 inside
/// strings (those characters appear nowhere else in JSON).
pub(crate) fn export_json(entries: &[Exported]) -> anyhow::Result<String> {
    let mut buf = Vec::new();
    let fmt = serde_json::ser::PrettyFormatter::with_indent(b"\t");
    let mut ser = serde_json::Serializer::with_formatter(&mut buf, fmt);
    entries.serialize(&mut ser)?;
    let text = String::from_utf8(buf)?;
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// `kv export [PREFIX]`: every entry under the prefix as JSON.
pub(crate) async fn export(client: &Client, prefix: &str) -> anyhow::Result<()> {
    let prefix = clean(prefix)?;
    let entries: Vec<Entry> = match client.kv_get(prefix, "recurse").await? {
        Some(body) => serde_json::from_slice(&body).context("decoding the agent's answer")?,
        None => Vec::new(),
    };
    let exported: Vec<Exported> = entries
        .into_iter()
        .map(|e| Exported {
            key: e.key,
            flags: e.flags,
            value: e.value.unwrap_or_default(),
        })
        .collect();
    println!("{}", export_json(&exported)?);
    Ok(())
}

/// `kv import [@file|-|JSON]`: the entries of a `consul kv export`, each
/// written with its flags (`prefix` put before every key).
pub(crate) async fn import(client: &Client, data: &str, prefix: &str) -> anyhow::Result<()> {
    let text = match data {
        "-" => {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the entries from stdin")?;
            s
        }
        d if d.starts_with('@') => std::fs::read_to_string(&d[1..])
            .with_context(|| format!("reading the entries from {}", &d[1..]))?,
        d => d.to_string(),
    };
    let entries: Vec<Exported> = serde_json::from_str(&text)
        .context("cannot read the entries: expected the JSON `consul kv export` writes")?;
    // Everything is checked before the first write: a bad entry in the
    // middle must not leave half an import.
    let mut values = Vec::with_capacity(entries.len());
    for e in &entries {
        let key = format!("{prefix}{}", e.key);
        corro_consul_api::validate_kv_key(&key).map_err(|m| anyhow::anyhow!("{key:?}: {m}"))?;
        let v = decode_value(Some(&e.value)).with_context(|| format!("the value of {key:?}"))?;
        if v.len() > corro_consul_api::KV_MAX_VALUE {
            anyhow::bail!(
                "the value of {key:?} is {} bytes, over the {} byte limit",
                v.len(),
                corro_consul_api::KV_MAX_VALUE
            );
        }
        values.push((key, v, e.flags));
    }
    for (key, v, flags) in values {
        client
            .kv_put(&key, v, flags)
            .await
            .with_context(|| format!("failed to write {key}"))?;
        println!("Imported: {key}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn consul_flags_become_long_flags_after_kv_only() {
        assert_eq!(
            consul_style_flags(args(&["corrosion", "kv", "get", "-recurse", "-keys", "a"])),
            args(&["corrosion", "kv", "get", "--recurse", "--keys", "a"])
        );
        assert_eq!(
            consul_style_flags(args(&["corrosion", "kv", "put", "-flags=3", "k", "-"])),
            args(&["corrosion", "kv", "put", "--flags=3", "k", "-"])
        );
        assert_eq!(
            consul_style_flags(args(&["corrosion", "kv", "put", "--", "k", "-abc"])),
            args(&["corrosion", "kv", "put", "--", "k", "-abc"])
        );
        assert_eq!(
            consul_style_flags(args(&[
                "corrosion",
                "kv",
                "put",
                "-flags=1",
                "k",
                "-Xmx512m"
            ])),
            args(&["corrosion", "kv", "put", "--flags=1", "k", "-Xmx512m"])
        );
        assert_eq!(
            consul_style_flags(args(&["corrosion", "query", "-recurse"])),
            args(&["corrosion", "query", "-recurse"])
        );
    }

    #[test]
    fn export_is_gos_indented_json() {
        let e = vec![
            Exported {
                key: "a<b>&c".into(),
                flags: 7,
                value: "eA==".into(),
            },
            Exported {
                key: "empty".into(),
                flags: 0,
                value: String::new(),
            },
        ];
        let text = export_json(&e).unwrap();
        assert_eq!(
            text,
            "[\n\t{\n\t\t\"key\": \"a\\u003cb\\u003e\\u0026c\",\n\t\t\"flags\": 7,\n\t\t\"value\": \"eA==\"\n\t},\n\t{\n\t\t\"key\": \"empty\",\n\t\t\"flags\": 0,\n\t\t\"value\": \"\"\n\t}\n]"
        );
        let back: Vec<Exported> = serde_json::from_str(&text).unwrap();
        assert_eq!(back, e);
        assert_eq!(export_json(&[]).unwrap(), "[]");
    }
}
