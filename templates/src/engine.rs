//! The Rhai engine a template runs in: its functions and its limits.
//!
//! A [`Renderer`] owns one engine set up for one data [`Source`]; it
//! compiles templates ([`Renderer::compile`]) and renders them
//! ([`Renderer::render`]) into a string plus the [`Deps`] the render read.
//! Rendering is synchronous: callers run it on a blocking thread.
//!
//! Safety: every render is bounded by [`Limits`] (operations, call depth,
//! string, array and map sizes, output size, rows per query, wall-clock
//! time), so a runaway template stops with an error instead of hanging or
//! exhausting the agent. `eval`, module imports and `print` to stdout are
//! not available (`print`/`debug` go to the log).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rhai::{Array, Dynamic, EvalAltResult, ImmutableString, Map, Position};

use crate::discovery::DiscoveryCall;
use crate::source::{Deps, Params, Source};
use crate::syntax;
use crate::values::{self, Row, Rows};

/// Bounds on one render.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rhai operations (roughly: expressions evaluated).
    pub max_operations: u64,
    /// Nested function calls.
    pub max_call_levels: usize,
    /// Bytes of any one string a script builds.
    pub max_string_size: usize,
    /// Elements of any one array a script builds.
    pub max_array_size: usize,
    /// Entries of any one object map a script builds.
    pub max_map_size: usize,
    /// Bytes of rendered output.
    pub max_output: usize,
    /// Rows one `sql()` call may return.
    pub max_rows: usize,
    /// Wall-clock time of one render, queries included.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_operations: 50_000_000,
            max_call_levels: 64,
            max_string_size: 16 << 20,
            max_array_size: 100_000,
            max_map_size: 10_000,
            max_output: 64 << 20,
            max_rows: 1_000_000,
            timeout: Duration::from_secs(10),
        }
    }
}

/// A render that failed: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct RenderError {
    /// Template line (1-based), when known.
    pub line: Option<usize>,
    pub message: String,
}

/// A successful render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub output: String,
    pub deps: Deps,
}

/// A compiled template.
#[derive(Debug, Clone)]
pub struct Compiled {
    ast: rhai::AST,
}

struct State {
    out: String,
    deps: Deps,
    deadline: Instant,
    /// The key a `key()` call found missing in this render.
    missing_key: Option<String>,
}

/// One engine for one source (see the module doc).
pub struct Renderer {
    engine: rhai::Engine,
    state: Arc<Mutex<State>>,
    /// What the last render read when it failed (empty after a success).
    failed_deps: Mutex<Deps>,
    /// The missing key the last render failed on (consul-template waits
    /// for it; so does the runner, without retrying).
    waiting_for: Mutex<Option<String>>,
    timed_out: Arc<AtomicBool>,
    limits: Limits,
}

type Fallible<T> = Result<T, Box<EvalAltResult>>;

fn fail<T>(msg: impl Into<String>) -> Fallible<T> {
    Err(Box::new(EvalAltResult::ErrorRuntime(
        Dynamic::from(msg.into()),
        Position::NONE,
    )))
}

impl Renderer {
    /// An engine reading `source`; `hostname` is what `hostname()` returns.
    pub fn new(source: Arc<dyn Source>, hostname: String, limits: Limits) -> Renderer {
        let state = Arc::new(Mutex::new(State {
            out: String::new(),
            deps: Deps::default(),
            deadline: Instant::now(),
            missing_key: None,
        }));
        let timed_out = Arc::new(AtomicBool::new(false));
        let mut engine = rhai::Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_fail_on_invalid_map_property(true)
            .set_module_resolver(rhai::module_resolvers::DummyModuleResolver::new());
        engine.disable_symbol("eval");
        engine.on_print(|s| tracing::info!(target: crate::LOG_TARGET, "{s}"));
        engine.on_debug(
            |s, _, pos| tracing::debug!(target: crate::LOG_TARGET, line = pos.line(), "{s}"),
        );
        {
            let state = state.clone();
            let timed_out = timed_out.clone();
            engine.on_progress(move |ops| {
                if ops % 4096 == 0 && Instant::now() > state.lock().deadline {
                    timed_out.store(true, Ordering::Relaxed);
                    return Some(Dynamic::from("render timed out"));
                }
                None
            });
        }
        register_output(&mut engine, &state, limits);
        register_each(&mut engine, &state, limits);
        register_values(&mut engine);
        register_sql(&mut engine, &state, &source, limits);
        register_discovery(&mut engine, &state, &source);
        register_kv(&mut engine, &state, &source);
        register_helpers(&mut engine, hostname);
        Renderer {
            engine,
            state,
            failed_deps: Mutex::new(Deps::default()),
            waiting_for: Mutex::new(None),
            timed_out,
            limits,
        }
    }

    /// Compiles template text.
    pub fn compile(&self, text: &str) -> Result<Compiled, RenderError> {
        let script = syntax::translate(text).map_err(|e| RenderError {
            line: match e {
                syntax::SyntaxError::Unclosed { line } => Some(line),
            },
            message: e.to_string(),
        })?;
        let ast = self.engine.compile(script).map_err(|e| RenderError {
            line: e.position().line(),
            message: e.err_type().to_string(),
        })?;
        Ok(Compiled { ast })
    }

    /// Renders a compiled template.
    pub fn render(&self, tpl: &Compiled) -> Result<Rendered, RenderError> {
        {
            let mut s = self.state.lock();
            s.out.clear();
            s.deps = Deps::default();
            s.deadline = Instant::now() + self.limits.timeout;
            s.missing_key = None;
        }
        *self.waiting_for.lock() = None;
        self.timed_out.store(false, Ordering::Relaxed);
        let result = self.engine.run_ast(&tpl.ast);
        let mut s = self.state.lock();
        let out = std::mem::take(&mut s.out);
        let deps = std::mem::take(&mut s.deps);
        let missing = s.missing_key.take();
        drop(s);
        match result {
            Ok(()) => {
                *self.failed_deps.lock() = Deps::default();
                *self.waiting_for.lock() = None;
                Ok(Rendered { output: out, deps })
            }
            Err(e) => {
                *self.failed_deps.lock() = deps;
                let e = self.error(*e);
                // Only when the render failed on that very miss (a script
                // may catch it and fail later for another reason).
                *self.waiting_for.lock() =
                    missing.filter(|k| e.message.contains(&missing_key_message(k)));
                Err(e)
            }
        }
    }

    /// The missing key the last render failed on: the render waits for
    /// it to be written (no retry timer, no error).
    pub fn waiting_for(&self) -> Option<String> {
        self.waiting_for.lock().clone()
    }

    /// What the last render read up to its failure (empty when it did not
    /// fail): a render that failed on a missing key re-renders as soon as
    /// that key appears.
    pub fn failed_deps(&self) -> Deps {
        self.failed_deps.lock().clone()
    }

    fn error(&self, mut e: EvalAltResult) -> RenderError {
        let mut line = e.take_position().line();
        // An error inside a template function: report the innermost line.
        let mut inner = &e;
        while let EvalAltResult::ErrorInFunctionCall(_, _, err, pos) = inner {
            line = pos.line().or(line);
            inner = err;
        }
        let message = match inner {
            EvalAltResult::ErrorTerminated(..) if self.timed_out.load(Ordering::Relaxed) => {
                format!(
                    "render took longer than {:?} and was stopped",
                    self.limits.timeout
                )
            }
            EvalAltResult::ErrorTooManyOperations(_) => format!(
                "render stopped after {} operations (a runaway loop?)",
                self.limits.max_operations
            ),
            other => {
                if let Some(l) = other.position().line() {
                    line = Some(l);
                }
                // The message without Rhai's "(line l, position p)" suffix.
                let text = other.to_string();
                match text.rfind(" (line ") {
                    Some(i) if text.ends_with(')') => text[..i].to_string(),
                    _ => text,
                }
            }
        };
        RenderError { line, message }
    }
}

fn register_output(engine: &mut rhai::Engine, state: &Arc<Mutex<State>>, limits: Limits) {
    let push = {
        let state = state.clone();
        move |text: &str| -> Fallible<()> {
            let mut s = state.lock();
            if s.out.len() + text.len() > limits.max_output {
                return fail(format!(
                    "output exceeds the limit of {} bytes",
                    limits.max_output
                ));
            }
            s.out.push_str(text);
            Ok(())
        }
    };
    let p = push.clone();
    engine.register_fn("__emit", move |text: &str| p(text));
    engine.register_fn("__emit3", move |before: &str, v: Dynamic, after: &str| {
        push(before)?;
        if v.is_unit() {
        } else if let Some(s) = v.read_lock::<ImmutableString>() {
            push(s.as_str())?;
        } else {
            push(&v.to_string())?;
        }
        push(after)
    });
}

/// `__each(rows, parts)`: the translator's native loop (`syntax.rs`): for
/// each row, the literal parts and the named cells in turn, formatted as
/// `__emit3` formats them. When a part names a column the query does not
/// return it writes nothing and returns false: the interpreted loop then
/// runs and reports the error at the line of the tag.
fn register_each(engine: &mut rhai::Engine, state: &Arc<Mutex<State>>, limits: Limits) {
    let state = state.clone();
    engine.register_fn(
        "__each",
        move |rows: &mut Rows, parts: Array| -> Fallible<bool> {
            let parts: Vec<ImmutableString> = parts
                .into_iter()
                .map(Dynamic::into_immutable_string)
                .collect::<Result<_, _>>()
                .or_else(|t| fail(format!("__each: a part is a {t}, not a string")))?;
            let mut cols = Vec::with_capacity(parts.len() / 2);
            for name in parts.iter().skip(1).step_by(2) {
                match rows.columns.iter().position(|c| c == name.as_str()) {
                    Some(i) => cols.push(i),
                    None if rows.is_empty() => cols.push(0),
                    None => return Ok(false),
                }
            }
            let mut s = state.lock();
            for (r, cells) in rows.rows.iter().enumerate() {
                if r % 4096 == 4095 && Instant::now() > s.deadline {
                    return fail(format!(
                        "render took longer than {:?} and was stopped",
                        limits.timeout
                    ));
                }
                for (n, part) in parts.iter().enumerate() {
                    let formatted;
                    let text: &str = if n % 2 == 0 {
                        part
                    } else {
                        match cells.get(cols[n / 2]) {
                            None | Some(corro_client::Value::Null) => "",
                            Some(corro_client::Value::Text(t)) => t,
                            Some(other) => {
                                formatted = values::to_dynamic(other).to_string();
                                &formatted
                            }
                        }
                    };
                    if s.out.len() + text.len() > limits.max_output {
                        return fail(format!(
                            "output exceeds the limit of {} bytes",
                            limits.max_output
                        ));
                    }
                    s.out.push_str(text);
                }
            }
            Ok(true)
        },
    );
}

fn register_values(engine: &mut rhai::Engine) {
    engine
        .register_type_with_name::<Rows>("Rows")
        .register_iterator::<Rows>()
        .register_fn("len", |r: &mut Rows| r.len() as i64)
        .register_fn("is_empty", |r: &mut Rows| r.is_empty())
        .register_fn("columns", |r: &mut Rows| -> Array {
            r.columns.iter().map(|c| Dynamic::from(c.clone())).collect()
        })
        .register_indexer_get(|r: &mut Rows, i: i64| -> Fallible<Row> {
            let idx = if i < 0 { r.len() as i64 + i } else { i };
            usize::try_from(idx).ok().and_then(|i| r.at(i)).map_or_else(
                || fail(format!("row {i} out of range ({} rows)", r.len())),
                Ok,
            )
        })
        .register_type_with_name::<Row>("Row")
        .register_indexer_get(|r: &mut Row, col: &str| -> Fallible<Dynamic> {
            r.get(col).map_or_else(
                || {
                    fail(format!(
                        "no column {col:?} in this row (columns: {})",
                        r.columns().join(", ")
                    ))
                },
                Ok,
            )
        })
        .register_indexer_get(|r: &mut Row, i: i64| -> Fallible<Dynamic> {
            r.nth(i).map_or_else(
                || fail(format!("no column {i} ({} columns)", r.columns().len())),
                Ok,
            )
        })
        .register_fn("columns", |r: &mut Row| -> Array {
            r.columns()
                .iter()
                .map(|c| Dynamic::from(c.clone()))
                .collect()
        })
        .register_fn("to_map", |r: &mut Row| r.to_map())
        .register_fn("to_json", |r: &mut Row| {
            serde_json::to_string(&Dynamic::from_map(r.to_map())).unwrap_or_default()
        })
        .register_fn("to_string", |r: &mut Row| {
            serde_json::to_string(&Dynamic::from_map(r.to_map())).unwrap_or_default()
        })
        .register_fn("to_json", |r: &mut Rows| r.to_json(false, false))
        .register_fn("to_json", |r: &mut Rows, opts: Map| {
            let flag = |k: &str| opts.get(k).and_then(|v| v.as_bool().ok()).unwrap_or(false);
            r.to_json(flag("pretty"), flag("arrays"))
        })
        .register_fn("to_csv", |r: &mut Rows| r.to_csv())
        .register_fn("to_string", |r: &mut Rows| r.to_json(false, false))
        .register_fn("is_null", |v: Dynamic| v.is_unit())
        .register_fn("to_json", |v: Dynamic| -> Fallible<String> {
            serde_json::to_string(&v).or_else(|e| fail(e.to_string()))
        })
        .register_fn("to_json", |v: Dynamic, opts: Map| -> Fallible<String> {
            let pretty = opts
                .get("pretty")
                .and_then(|v| v.as_bool().ok())
                .unwrap_or(false);
            let text = if pretty {
                serde_json::to_string_pretty(&v)
            } else {
                serde_json::to_string(&v)
            };
            text.or_else(|e| fail(e.to_string()))
        });
}

fn run_sql(
    state: &Mutex<State>,
    source: &Arc<dyn Source>,
    limits: Limits,
    sql: &str,
    params: Params,
) -> Fallible<Rows> {
    let deadline = {
        let mut st = state.lock();
        st.deps.add_query(sql);
        st.deadline
    };
    let q = crate::source::QueryLimits {
        max_rows: limits.max_rows,
        deadline,
    };
    let rows = source
        .query(sql, &params, q)
        .or_else(|e| fail(format!("sql({sql:?}): {e}")))?;
    if rows.len() > limits.max_rows {
        return fail(format!(
            "sql({sql:?}) returned {} rows, over the limit of {}",
            rows.len(),
            limits.max_rows
        ));
    }
    Ok(rows)
}

fn param(v: &Dynamic) -> Fallible<corro_client::Value> {
    values::from_dynamic(v).map_or_else(
        || {
            fail(format!(
                "a SQL parameter must be (), a number, a bool, a string or a blob, not {}",
                v.type_name()
            ))
        },
        Ok,
    )
}

fn register_sql(
    engine: &mut rhai::Engine,
    state: &Arc<Mutex<State>>,
    source: &Arc<dyn Source>,
    limits: Limits,
) {
    let (st, src) = (state.clone(), source.clone());
    engine.register_fn("sql", move |q: &str| {
        run_sql(&st, &src, limits, q, Params::None)
    });
    let (st, src) = (state.clone(), source.clone());
    engine.register_fn("sql", move |q: &str, params: Array| {
        let p = params.iter().map(param).collect::<Fallible<Vec<_>>>()?;
        run_sql(&st, &src, limits, q, Params::Positional(p))
    });
    let (st, src) = (state.clone(), source.clone());
    engine.register_fn("sql", move |q: &str, params: Map| {
        let p = params
            .iter()
            .map(|(k, v)| Ok((k.to_string(), param(v)?)))
            .collect::<Fallible<Vec<_>>>()?;
        run_sql(&st, &src, limits, q, Params::Named(p))
    });
}

fn register_discovery(
    engine: &mut rhai::Engine,
    state: &Arc<Mutex<State>>,
    source: &Arc<dyn Source>,
) {
    let call = {
        let (st, src) = (state.clone(), source.clone());
        move |c: DiscoveryCall| -> Fallible<Dynamic> {
            st.lock().deps.discovery = true;
            let v = src.discovery(&c).or_else(|e| fail(e.to_string()))?;
            rhai::serde::to_dynamic(v)
        }
    };
    let c = call.clone();
    engine.register_fn("services", move || c(DiscoveryCall::Services));
    let c = call.clone();
    engine.register_fn("service", move |name: &str| {
        c(DiscoveryCall::Instances {
            service: name.into(),
            tag: None,
            any: false,
        })
    });
    let c = call.clone();
    engine.register_fn("service", move |name: &str, tag: &str| {
        c(DiscoveryCall::Instances {
            service: name.into(),
            tag: Some(tag.into()),
            any: false,
        })
    });
    let c = call.clone();
    engine.register_fn(
        "service",
        move |name: &str, opts: Map| -> Fallible<Dynamic> {
            let mut tag = None;
            let mut any = false;
            for (k, v) in &opts {
                match k.as_str() {
                    "tag" if v.is_unit() => {}
                    "tag" => tag = Some(v.to_string()),
                    "any" => {
                        any = v
                            .as_bool()
                            .or_else(|_| fail("service(): `any` must be true or false"))?
                    }
                    other => {
                        return fail(format!(
                            "service(): unknown option {other:?} (options: tag, any)"
                        ));
                    }
                }
            }
            c(DiscoveryCall::Instances {
                service: name.into(),
                tag,
                any,
            })
        },
    );
    let c = call.clone();
    engine.register_fn("checks", move |name: &str| {
        c(DiscoveryCall::Checks {
            service: name.into(),
        })
    });
    let c = call.clone();
    engine.register_fn("nodes", move || c(DiscoveryCall::Nodes));
    let c = call.clone();
    engine.register_fn("node", move || c(DiscoveryCall::Node { name: None }));
    engine.register_fn("node", move |name: &str| {
        call(DiscoveryCall::Node {
            name: Some(name.into()),
        })
    });
}

/// How a render that waits for key `k` says so.
fn missing_key_message(k: &str) -> String {
    format!("key {k:?} does not exist")
}

/// The KV helpers: `key(k)` (an error when the key does not exist, as
/// consul-template waits for it), `key_or_default(k, d)`, `key_exists(k)`,
/// `ls(folder)` and `tree(folder)`. Each records exactly the key or folder
/// it read, so only a change there re-renders.
fn register_kv(engine: &mut rhai::Engine, state: &Arc<Mutex<State>>, source: &Arc<dyn Source>) {
    let read_key = {
        let (st, src) = (state.clone(), source.clone());
        move |k: &str| -> Fallible<serde_json::Value> {
            let k = k.trim_start_matches('/').to_string();
            // A key no one can write is an error, not something to wait for.
            if k.is_empty() {
                return fail("a KV key must not be empty");
            }
            if let Err(e) = corro_catalog::kv::validate_key(&k) {
                return fail(format!("{e}: {k:?}"));
            }
            st.lock().deps.kv_keys.insert(k.clone());
            src.discovery(&DiscoveryCall::Key { key: k })
                .or_else(|e| fail(e.to_string()))
        }
    };
    let value = |v: &serde_json::Value| -> String {
        v.get("value")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let r = read_key.clone();
    let st = state.clone();
    engine.register_fn("key", move |k: &str| -> Fallible<String> {
        let v = r(k)?;
        if v.is_null() {
            let k = k.trim_start_matches('/');
            st.lock().missing_key = Some(k.to_string());
            return fail(format!(
                "{} (key_or_default() or key_exists() do not fail on a missing key)",
                missing_key_message(k)
            ));
        }
        Ok(value(&v))
    });
    let r = read_key.clone();
    engine.register_fn(
        "key_or_default",
        move |k: &str, default: &str| -> Fallible<String> {
            let v = r(k)?;
            Ok(if v.is_null() {
                default.to_string()
            } else {
                value(&v)
            })
        },
    );
    engine.register_fn("key_exists", move |k: &str| -> Fallible<bool> {
        Ok(!read_key(k)?.is_null())
    });
    let list = {
        let (st, src) = (state.clone(), source.clone());
        move |prefix: &str, one_level: bool| -> Fallible<Dynamic> {
            let folder = crate::discovery::kv_folder(prefix);
            if !folder.is_empty()
                && let Err(e) = corro_catalog::kv::validate_key(&folder)
            {
                return fail(format!("{e}: {folder:?}"));
            }
            st.lock().deps.kv_prefixes.insert(folder.clone());
            let call = if one_level {
                DiscoveryCall::Ls { prefix: folder }
            } else {
                DiscoveryCall::Tree { prefix: folder }
            };
            let v = src.discovery(&call).or_else(|e| fail(e.to_string()))?;
            rhai::serde::to_dynamic(v)
        }
    };
    let l = list.clone();
    engine.register_fn("ls", move |p: &str| l(p, true));
    engine.register_fn("tree", move |p: &str| list(p, false));
}

fn register_helpers(engine: &mut rhai::Engine, hostname: String) {
    engine
        .register_fn("hostname", move || hostname.clone())
        .register_fn("env", |name: &str| std::env::var(name).unwrap_or_default())
        .register_fn("env", |name: &str, default: &str| {
            std::env::var(name).unwrap_or_else(|_| default.to_string())
        })
        .register_fn("join", |items: Array, sep: &str| -> String {
            items
                .iter()
                .map(|d| {
                    if d.is_unit() {
                        String::new()
                    } else {
                        d.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(sep)
        })
        // Rhai's own `replace` and `trim` change the string in place and
        // return nothing; in a template the new value is what is wanted.
        .register_fn("replace", |s: &str, from: &str, to: &str| {
            s.replace(from, to)
        })
        .register_fn("trim", |s: &str| s.trim().to_string())
        .register_fn("parse_json", |s: &str| -> Fallible<Dynamic> {
            let v: serde_json::Value =
                serde_json::from_str(s).or_else(|e| fail(format!("parse_json: {e}")))?;
            rhai::serde::to_dynamic(v)
        });
}
