//! Service definition files, as Consul's agent reads them from its config
//! directory: JSON (`*.json`) or HCL (`*.hcl`) holding a `service` block
//! (or several) or a `services` list, each a service definition with its
//! `check`/`checks`. Keys in CamelCase or snake_case.
//!
//! [`load`] parses every file under the configured paths; [`reconcile`]
//! brings the registry to them: services of new or changed files are
//! registered, services whose file is gone or no longer lists them are
//! deregistered. A file that does not parse or validate is refused whole,
//! with its path, line (where the parser knows it) and reason, and the
//! services it defined before stay as they were.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::Origin;
use crate::registry::{Registry, RegistryError};
use crate::service::ServiceDefinition;

/// Largest definition file read.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most definition files read from the configured paths.
pub const MAX_FILES: usize = 10_000;

/// One file's services, or why it was refused.
#[derive(Debug)]
pub struct Loaded {
    pub path: PathBuf,
    pub services: Result<Vec<Value>, String>,
}

/// Reads every `*.json` and `*.hcl` file in `paths` (directories are read
/// one level deep, in name order; a path may also name a file). A path that
/// is missing or cannot be listed whole comes back as one refused entry
/// (its path, the reason): the services of its files keep their state
/// rather than being taken for removed.
pub fn load(paths: &[PathBuf]) -> Vec<Loaded> {
    let mut out = Vec::new();
    let mut count = 0usize;
    for p in paths {
        match list(p) {
            Ok(files) => {
                count += files.len();
                if count > MAX_FILES {
                    out.push(Loaded {
                        path: p.clone(),
                        services: Err(format!(
                            "more than {MAX_FILES} service definition files in the configured paths"
                        )),
                    });
                    continue;
                }
                for path in files {
                    let services = parse_file(&path);
                    out.push(Loaded { path, services });
                }
            }
            Err(reason) => out.push(Loaded {
                path: p.clone(),
                services: Err(reason),
            }),
        }
    }
    out
}

/// The definition files a configured path names.
fn list(p: &Path) -> Result<Vec<PathBuf>, String> {
    let meta = std::fs::metadata(p).map_err(|e| format!("cannot read it: {e}"))?;
    if !meta.is_dir() {
        return Ok(vec![p.to_path_buf()]);
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(p).map_err(|e| format!("cannot list it: {e}"))? {
        let path = entry.map_err(|e| format!("cannot list it: {e}"))?.path();
        if matches!(
            path.extension().and_then(|x| x.to_str()),
            Some("json") | Some("hcl")
        ) {
            names.push(path);
        }
    }
    names.sort();
    Ok(names)
}

/// The service bodies in one file.
pub fn parse_file(path: &Path) -> Result<Vec<Value>, String> {
    use std::io::Read;
    // Only regular files (a FIFO would block the reload, a device would
    // never end), and never more than the limit whatever the size said.
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let meta = file.metadata().map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let text = String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())?;
    let hcl = path.extension().and_then(|x| x.to_str()) == Some("hcl");
    parse_text(&text, hcl)
}

/// The service bodies in a definition's text (JSON, or HCL when `hcl`),
/// each validated.
pub fn parse_text(text: &str, hcl: bool) -> Result<Vec<Value>, String> {
    let doc: Value = if hcl {
        hcl::from_str(text).map_err(|e| e.to_string())?
    } else {
        serde_json::from_str(text)
            .map_err(|e| format!("line {}, column {}: {e}", e.line(), e.column()))?
    };
    let obj = doc
        .as_object()
        .ok_or("expected an object with a `service` or `services` key")?;
    let mut bodies = Vec::new();
    for (k, v) in obj {
        match corro_checks::fields::fold(k).as_str() {
            "service" | "services" => match v {
                Value::Array(list) => bodies.extend(list.iter().cloned()),
                Value::Object(_) => bodies.push(v.clone()),
                _ => return Err(format!("`{k}` must be a block or a list of them")),
            },
            _ => {
                return Err(format!(
                    "unknown key `{k}` (expected `service` or `services`)"
                ));
            }
        }
    }
    if bodies.is_empty() {
        return Err("no `service` or `services` in it".into());
    }
    let mut ids = BTreeSet::new();
    for (i, b) in bodies.iter().enumerate() {
        let d = ServiceDefinition::decode(b).map_err(|e| format!("service {}: {e}", i + 1))?;
        if !ids.insert(d.id.clone()) {
            return Err(format!(
                "service {}: the ID {:?} is defined twice",
                i + 1,
                d.id
            ));
        }
    }
    Ok(bodies)
}

/// A refusal reason cut to a readable length (a parser may quote a whole
/// line of the file).
fn shorten(reason: &str) -> String {
    const MAX: usize = 300;
    if reason.len() <= MAX {
        return reason.to_string();
    }
    let mut cut = MAX;
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} ...", &reason[..cut])
}

/// What a reconciliation did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reconciled {
    pub registered: Vec<String>,
    pub deregistered: Vec<String>,
    pub unchanged: usize,
    /// Refused files: `path: reason`.
    pub refused: Vec<String>,
}

/// Brings the registry's file-defined services to `loaded`.
pub async fn reconcile(reg: &Registry, loaded: Vec<Loaded>) -> Reconciled {
    let mut out = Reconciled::default();
    let before = reg.file_services();
    let mut keep_files = BTreeSet::new();
    let mut wanted: BTreeMap<String, (String, Value)> = BTreeMap::new();
    for l in loaded {
        let file = l.path.display().to_string();
        keep_files.insert(file.clone());
        match l.services {
            Err(reason) => {
                let reason = shorten(&reason);
                tracing::error!(file = %file, %reason, "service definition file refused; its services stay as they were");
                out.refused.push(format!("{file}: {reason}"));
                // Last good state kept: the services of this file, or of
                // every file under this path, stay wanted.
                // Each keeps the file it came from.
                let under = before
                    .iter()
                    .filter(|(f, _)| Path::new(f.as_str()).starts_with(&l.path))
                    .flat_map(|(f, ids)| ids.iter().map(move |id| (f, id)));
                for (f, id) in under {
                    if let Some((raw, _)) = reg.service_source(id) {
                        wanted.insert(id.clone(), (f.clone(), raw));
                    }
                }
            }
            Ok(bodies) => {
                for b in bodies {
                    let id = match ServiceDefinition::decode(&b) {
                        Ok(d) => d.id,
                        Err(_) => continue,
                    };
                    if let Some((other, _)) = wanted.get(&id) {
                        // The file that holds it now keeps it; a second
                        // file defining the same ID is refused.
                        let owned_here = before.get(&file).is_some_and(|ids| ids.contains(&id));
                        let (loser, winner) = if owned_here {
                            (other.clone(), file.clone())
                        } else {
                            (file.clone(), other.clone())
                        };
                        let reason = format!("service {id:?} is also defined in {winner}");
                        tracing::error!(file = %loser, %reason, "service definition refused");
                        out.refused.push(format!("{loser}: {reason}"));
                        if owned_here {
                            wanted.insert(id, (file.clone(), b));
                        }
                        continue;
                    }
                    wanted.insert(id, (file.clone(), b));
                }
            }
        }
    }
    for (id, (file, raw)) in &wanted {
        let same = reg
            .service_source(id)
            .is_some_and(|(r, o)| r == *raw && o == Origin::File(file.clone()));
        if same {
            out.unchanged += 1;
            continue;
        }
        match reg
            .register_service(raw.clone(), true, Origin::File(file.clone()))
            .await
        {
            Ok(()) => out.registered.push(id.clone()),
            Err(e) => {
                tracing::error!(file = %file, service = %id, error = %e, "service definition refused");
                out.refused.push(format!("{file}: service {id:?}: {e}"));
            }
        }
    }
    for ids in before.values() {
        for id in ids {
            if !wanted.contains_key(id) {
                match reg.deregister_service(id).await {
                    Ok(()) | Err(RegistryError::NotFound(_)) => out.deregistered.push(id.clone()),
                    Err(e) => {
                        tracing::warn!(service = %id, error = %e, "could not deregister a service whose definition file went away")
                    }
                }
            }
        }
    }
    tracing::info!(
        registered = out.registered.len(),
        deregistered = out.deregistered.len(),
        unchanged = out.unchanged,
        refused = out.refused.len(),
        "service definition files reconciled"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_hcl_definitions() {
        let j = parse_text(
            r#"{"service": {"name": "web", "port": 80, "check": {"http": "http://x/", "interval": "10s"}}}"#,
            false,
        )
        .unwrap();
        assert_eq!(j.len(), 1);
        let h = parse_text(
            "service {\n  name = \"web\"\n  port = 80\n  check {\n    tcp = \"x:1\"\n    interval = \"5s\"\n  }\n}\nservice {\n  name = \"db\"\n}\n",
            true,
        )
        .unwrap();
        assert_eq!(h.len(), 2);
        let l = parse_text("services = [ { name = \"a\" }, { name = \"b\" } ]\n", true).unwrap();
        assert_eq!(l.len(), 2);
    }

    #[test]
    fn bad_files_say_where_and_why() {
        let e = parse_text("{\n  \"service\": {\n    \"name\": \n}", false).unwrap_err();
        assert!(e.starts_with("line 4"), "{e}");
        let e = parse_text("service {\n  name = \n}\n", true).unwrap_err();
        assert!(e.contains("line 2"), "{e}");
        let e = parse_text(r#"{"service": {"port": 1}}"#, false).unwrap_err();
        assert_eq!(e, "service 1: Missing service name");
        let e = parse_text(r#"{"services": [{"name": "a"}, {"name": "a"}]}"#, false).unwrap_err();
        assert!(e.contains("defined twice"), "{e}");
        assert!(parse_text(r#"{"svc": {}}"#, false).is_err());
        assert!(parse_text("[]", false).is_err());
    }
}
