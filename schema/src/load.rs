//! Reading schema files from the configured paths.
//!
//! A path may be a `.sql` file or a directory; directories contribute every
//! `*.sql` file directly inside them, in name order, so the result does not
//! depend on directory iteration order.

use std::path::{Path, PathBuf};

use crate::SchemaError;

/// One schema file's text and where it came from.
#[derive(Debug, Clone)]
pub struct SchemaSource {
    pub path: PathBuf,
    pub sql: String,
}

/// Reads every schema file under `paths`.
pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<SchemaSource>, SchemaError> {
    let mut out = Vec::new();
    for p in paths {
        let p = p.as_ref();
        let io = |source| SchemaError::Io {
            path: p.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(p).map_err(io)?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.extension().is_some_and(|e| e == "sql") && f.is_file())
                .collect();
            files.sort();
            for f in files {
                out.push(read_one(&f)?);
            }
        } else {
            out.push(read_one(p)?);
        }
    }
    Ok(out)
}

fn read_one(path: &Path) -> Result<SchemaSource, SchemaError> {
    let sql = std::fs::read_to_string(path).map_err(|source| SchemaError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(SchemaSource {
        path: path.to_path_buf(),
        sql,
    })
}
