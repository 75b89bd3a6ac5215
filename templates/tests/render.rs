//! Rendering through the engine with an in-memory source: the reference's
//! `todos.rhai`, every template function, errors with their lines, and the
//! limits that stop runaway templates.

use std::sync::Arc;
use std::time::Duration;

use corro_client::Value;
use corro_templates::{
    DiscoveryCall, Limits, Params, QueryLimits, Renderer, Rows, Source, SourceError,
};
use parking_lot::Mutex;

/// The reference's template, as the book prints it.
const TODOS: &str = r#"<% for todo in sql("SELECT title, completed_at FROM todos") { %>
[<% if todo.completed_at.is_null() { %> <% } else { %>X<% } %>] <%= todo.title %>
<% } %>
"#;

#[derive(Default)]
struct Fake {
    todos: Mutex<Vec<(String, Option<i64>)>>,
    calls: Mutex<Vec<(String, Params)>>,
}

impl Source for Fake {
    fn query(&self, sql: &str, params: &Params, _: QueryLimits) -> Result<Rows, SourceError> {
        self.calls.lock().push((sql.to_string(), params.clone()));
        if sql.contains("FROM todos") {
            let rows = self
                .todos
                .lock()
                .iter()
                .map(|(t, c)| {
                    vec![
                        Value::Text(t.clone()),
                        c.map_or(Value::Null, Value::Integer),
                    ]
                })
                .collect();
            return Ok(Rows::new(vec!["title".into(), "completed_at".into()], rows));
        }
        if sql.contains("FROM nums") {
            let rows = (0..1000).map(|i| vec![Value::Integer(i)]).collect();
            return Ok(Rows::new(vec!["n".into()], rows));
        }
        if sql.contains("echo") {
            let vals = match params {
                Params::None => vec![],
                Params::Positional(v) => v.clone(),
                Params::Named(v) => v.iter().map(|(_, v)| v.clone()).collect(),
            };
            let cols = (0..vals.len()).map(|i| format!("p{i}")).collect();
            return Ok(Rows::new(cols, vec![vals]));
        }
        Err(SourceError("no such table: nope".into()))
    }

    fn discovery(&self, call: &DiscoveryCall) -> Result<serde_json::Value, SourceError> {
        Ok(match call {
            DiscoveryCall::Instances { service, tag, any } => serde_json::json!([
                { "address": "10.0.0.1", "port": 80, "name": service, "tag": tag, "any": any }
            ]),
            DiscoveryCall::Node { name: None } => serde_json::json!({ "name": "here" }),
            DiscoveryCall::Key { key } if key == "present" => serde_json::json!({ "value": "v" }),
            DiscoveryCall::Key { .. } => serde_json::Value::Null,
            other => serde_json::json!({ "what": format!("{other:?}") }),
        })
    }
}

fn renderer(src: &Arc<Fake>) -> Renderer {
    Renderer::new(src.clone(), "host-1".into(), Limits::default())
}

fn render(src: &Arc<Fake>, text: &str) -> Result<String, corro_templates::RenderError> {
    let r = renderer(src);
    let c = r.compile(text)?;
    r.render(&c).map(|x| x.output)
}

#[test]
fn todos_renders_byte_for_byte_as_the_reference_shows() {
    let src = Arc::new(Fake::default());
    src.todos.lock().extend([
        ("Write some Corrosion docs!".to_string(), None),
        ("Show how broadcasts work".to_string(), None),
    ]);
    assert_eq!(
        render(&src, TODOS).unwrap(),
        "[ ] Write some Corrosion docs!\n[ ] Show how broadcasts work\n"
    );
    for t in src.todos.lock().iter_mut() {
        t.1 = Some(1234567890);
    }
    assert_eq!(
        render(&src, TODOS).unwrap(),
        "[X] Write some Corrosion docs!\n[X] Show how broadcasts work\n"
    );
}

#[test]
fn deps_name_the_tables_read() {
    let src = Arc::new(Fake::default());
    let r = renderer(&src);
    let c = r.compile(TODOS).unwrap();
    let out = r.render(&c).unwrap();
    assert!(out.deps.tables.contains("todos") && !out.deps.discovery);
    let c = r.compile("<%= service(\"web\").len() %>").unwrap();
    let out = r.render(&c).unwrap();
    assert!(out.deps.discovery && out.deps.tables.is_empty());
}

#[test]
fn sql_parameters_positional_and_named() {
    let src = Arc::new(Fake::default());
    let out = render(
        &src,
        r#"<% let r = sql("SELECT echo", [1, "a", (), true, 2.5]); %><%= r[0].p0 %>|<%= r[0]["p1"] %>|<%= r[0].p2.is_null() %>|<%= r[0].p3 %>|<%= r[0].p4 %>"#,
    )
    .unwrap();
    assert_eq!(out, "1|a|true|1|2.5");
    render(
        &src,
        r#"<% sql("SELECT echo WHERE x = :x", #{":x": "v"}); %>"#,
    )
    .unwrap();
    let calls = src.calls.lock();
    assert_eq!(
        calls.last().unwrap().1,
        Params::Named(vec![(":x".into(), Value::Text("v".into()))])
    );
}

#[test]
fn json_csv_and_string_helpers() {
    let src = Arc::new(Fake::default());
    src.todos.lock().push(("a,b".to_string(), None));
    let q = r#"sql("SELECT title, completed_at FROM todos")"#;
    assert_eq!(
        render(&src, &format!("<%= {q}.to_json() %>")).unwrap(),
        r#"[{"title":"a,b","completed_at":null}]"#
    );
    assert_eq!(
        render(&src, &format!("<%= {q}.to_json(#{{arrays: true}}) %>")).unwrap(),
        r#"[["a,b",null]]"#
    );
    assert_eq!(
        render(&src, &format!("<%= {q}.to_json(#{{pretty: true}}) %>")).unwrap(),
        "[\n  {\n    \"title\": \"a,b\",\n    \"completed_at\": null\n  }\n]"
    );
    assert_eq!(
        render(&src, &format!("<%= {q}.to_csv() %>")).unwrap(),
        "title,completed_at\r\n\"a,b\",\r\n"
    );
    assert_eq!(
        render(
            &src,
            r#"<%= join(["a", 1, ()], ",") %>|<%= "a.b.c".replace(".", "_") %>|<%= "  x ".trim() %>|<%= "a-b".split("-")[1] %>|<%= "abc".contains("b") %>|<%= "abc".starts_with("ab") %>|<%= parse_json("{\"k\": [1, 2]}").k[1] %>|<%= hostname() %>|<%= env("CORRO_TPL_TEST_UNSET") %>|<%= env("CORRO_TPL_TEST_UNSET", "dflt") %>|<%= "x".to_string() %>"#
        )
        .unwrap(),
        "a,1,|a_b_c|x|b|true|true|2|host-1||dflt|x"
    );
}

#[test]
fn discovery_helpers_pass_their_arguments() {
    let src = Arc::new(Fake::default());
    assert_eq!(
        render(
            &src,
            r#"<% for s in service("web") { %><%= s.address %>:<%= s.port %> <%= s.any %><% } %>|<%= service("web", "v1")[0].tag %>|<%= service("web", #{any: true, tag: "x"})[0].any %>|<%= node().name %>|<%= services().what %>|<%= nodes().what %>|<%= checks("web").what %>|<%= node("b").what %>"#
        )
        .unwrap(),
        "10.0.0.1:80 false|v1|true|here|Services|Nodes|Checks { service: \"web\" }|Node { name: Some(\"b\") }"
    );
    let e = render(&src, r#"<%= service("web", #{bogus: 1}) %>"#).unwrap_err();
    assert!(e.message.contains("unknown option"), "{e}");
}

#[test]
fn a_missing_key_is_waited_for_and_an_impossible_key_is_an_error() {
    let src = Arc::new(Fake::default());
    let r = renderer(&src);
    let c = r.compile(r#"<%= key("present") %>"#).unwrap();
    assert_eq!(r.render(&c).unwrap().output, "v");
    assert_eq!(r.waiting_for(), None);
    // Missing: the render stops and says which key it waits for.
    let c = r.compile(r#"<%= key("/app/max") %>"#).unwrap();
    assert!(r.render(&c).is_err());
    assert_eq!(r.waiting_for().as_deref(), Some("app/max"));
    // A key /v1/kv refuses can never be written: an error, not a wait.
    for bad in ["", "a/../b", "a/./b", " x", "a/.."] {
        let c = r.compile(&format!("<%= key({bad:?}) %>")).unwrap();
        let e = r.render(&c).unwrap_err();
        assert_eq!(r.waiting_for(), None, "{bad:?}: {e}");
    }
    // A caught miss followed by another failure is not a wait.
    let c = r
        .compile(r#"<% try { key("gone") } catch { } %><%= sql("SELECT * FROM nope") %>"#)
        .unwrap();
    assert!(r.render(&c).is_err());
    assert_eq!(r.waiting_for(), None);
    let e = render(&src, r#"<%= ls("a/../") %>"#).unwrap_err();
    assert!(e.message.contains("Invalid key"), "{e}");
}

#[test]
fn errors_name_the_template_line() {
    let src = Arc::new(Fake::default());
    src.todos.lock().push(("t".to_string(), None));
    let e = render(&src, "ok\nfine\n<% for t in sql(\"SELECT title, completed_at FROM todos\") { %>\n<%= t.missing %>\n<% } %>").unwrap_err();
    assert_eq!(e.line, Some(4), "{e}");
    assert!(e.message.contains("missing"), "{e}");
    let e = render(&src, "a\n<%= sql(\"SELECT * FROM nope\") %>").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    assert!(e.message.contains("no such table"), "{e}");
    let e = render(&src, "a\n<% let x = ; %>").unwrap_err();
    assert_eq!(e.line, Some(2), "{e}");
    let e = render(&src, "a\n\n<% if true {").unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
}

#[test]
fn limits_stop_runaway_templates() {
    let src = Arc::new(Fake::default());
    let limits = Limits {
        max_operations: 200_000,
        ..Limits::default()
    };
    let r = Renderer::new(src.clone(), "h".into(), limits);
    let c = r.compile("<% loop { } %>").unwrap();
    let e = r.render(&c).unwrap_err();
    assert!(e.message.contains("operations"), "{e}");

    let limits = Limits {
        timeout: Duration::from_millis(200),
        ..Limits::default()
    };
    let r = Renderer::new(src.clone(), "h".into(), limits);
    let c = r
        .compile("<% loop { sql(\"SELECT n FROM nums\"); } %>")
        .unwrap();
    let t = std::time::Instant::now();
    let e = r.render(&c).unwrap_err();
    assert!(e.message.contains("longer than"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));

    let limits = Limits {
        max_output: 1000,
        ..Limits::default()
    };
    let r = Renderer::new(src.clone(), "h".into(), limits);
    let c = r.compile("<% loop { %>xxxxxxxxxx<% } %>").unwrap();
    assert!(r.render(&c).unwrap_err().message.contains("output exceeds"));

    let r = renderer(&src);
    let c = r.compile("<% fn f(x) { f(x + 1) } f(0); %>").unwrap();
    assert!(r.render(&c).is_err());
    let c = r.compile("<% let s = \"x\"; loop { s += s; } %>").unwrap();
    assert!(r.render(&c).is_err());
    // Rhai checks an array's size on each push by walking it: a small
    // limit keeps this case quick.
    let r = Renderer::new(
        src.clone(),
        "h".into(),
        Limits {
            max_array_size: 10_000,
            ..Limits::default()
        },
    );
    let c = r.compile("<% let a = []; loop { a.push(1); } %>").unwrap();
    assert!(r.render(&c).is_err());
    let c = r.compile("<%= eval(\"1\") %>").map(|c| r.render(&c));
    assert!(!matches!(c, Ok(Ok(_))), "eval must not be available");
    let c = r.compile("<% import \"x\" as y; %>").map(|c| r.render(&c));
    assert!(!matches!(c, Ok(Ok(_))), "imports must not be available");
}

#[test]
fn the_renderer_is_reusable_after_an_error() {
    let src = Arc::new(Fake::default());
    let r = renderer(&src);
    let bad = r.compile("<%= sql(\"SELECT * FROM nope\") %>").unwrap();
    let good = r.compile("ok<%= 1 + 1 %>").unwrap();
    assert!(r.render(&bad).is_err());
    assert_eq!(r.render(&good).unwrap().output, "ok2");
}

#[test]
fn a_loop_of_queries_depends_on_one_table() {
    let src = Arc::new(Fake::default());
    let r = renderer(&src);
    let c = r
        .compile(r#"<% for n in sql("SELECT n FROM nums") { sql("SELECT echo FROM todos WHERE id = ?", [n.n]); } %>"#)
        .unwrap();
    let out = r.render(&c).unwrap();
    assert_eq!(src.calls.lock().len(), 1001);
    assert_eq!(
        out.deps.tables.iter().cloned().collect::<Vec<_>>(),
        vec!["nums".to_string(), "todos".to_string()]
    );
}

#[test]
fn rows_read_by_position_and_as_maps() {
    let src = Arc::new(Fake::default());
    src.todos.lock().push(("a".to_string(), Some(7)));
    let out = render(
        &src,
        r#"<% let r = sql("SELECT title, completed_at FROM todos")[0]; %><%= r[0] %>|<%= r[-1] %>|<%= r.to_map().completed_at %>|<%= r.columns() %>|<%= r.to_json() %>|<%= sql("SELECT title, completed_at FROM todos")[-1].title %>"#,
    )
    .unwrap();
    assert_eq!(
        out,
        r#"a|7|7|["title", "completed_at"]|{"completed_at":7,"title":"a"}|a"#
    );
    let e = render(
        &src,
        r#"<%= sql("SELECT title, completed_at FROM todos")[5] %>"#,
    )
    .unwrap_err();
    assert!(e.message.contains("out of range"), "{e}");
}

/// A loop whose body is only text and `<%= row.col %>` runs natively (no
/// interpretation per row) and writes exactly what the interpreted loop
/// writes; any other body, or a column the query lacks, is interpreted.
#[test]
fn simple_loops_render_natively_and_identically() {
    let src = Arc::new(Fake::default());
    let fast = "<% for r in sql(\"SELECT echo\", [\"a \\\"q\\\"\", (), 42, 1.5, -7]) { %>\
        [<%= r.p0 %>|<%= r.p1 %>|<%= r.p2 %>|<%= r.p3 %>|<%= r.p4 %>]\n<% } %>";
    let slow = fast
        .replace("r.p", "r[\"p")
        .replace(" %>|", "\"] %>|")
        .replace(" %>]", "\"] %>]");
    assert!(slow.contains("r[\"p0\"]"), "{slow}");
    let a = render(&src, fast).unwrap();
    assert_eq!(a, render(&src, &slow).unwrap());
    assert_eq!(a, "[a \"q\"||42|1.5|-7]\n");
    // 1,000 rows under a budget of 3,000 operations: only the native loop
    // fits (the interpreted one spends several per row).
    let limits = Limits {
        max_operations: 3_000,
        ..Limits::default()
    };
    let r = Renderer::new(src.clone(), "h".into(), limits);
    let c = r
        .compile("<% for x in sql(\"SELECT n FROM nums\") { %><%= x.n %>,<% } %>")
        .unwrap();
    let out = r.render(&c).unwrap().output;
    assert_eq!(out.matches(',').count(), 1000);
    assert!(out.starts_with("0,1,2,"), "{out}");
    let c = r
        .compile("<% for x in sql(\"SELECT n FROM nums\") { %><%= x[\"n\"] %>,<% } %>")
        .unwrap();
    assert!(r.render(&c).unwrap_err().message.contains("operations"));
    // Heads the native loop cannot take are interpreted as written: a
    // block opened on the same tag, a tag over several lines.
    assert_eq!(
        render(
            &src,
            "<% for x in sql(\"SELECT n FROM nums\") { if x.n < 2 { %>[<%= x.n %>]<% } %><% } %>"
        )
        .unwrap(),
        "[0][1]"
    );
    let e = render(
        &src,
        "<% for x in\nsql(\"SELECT n FROM nums\") { %>\n<%= x.missing %>\n<% } %>",
    )
    .unwrap_err();
    assert_eq!(e.line, Some(3), "{e}");
    // The output limit holds to the byte.
    let limits = Limits {
        max_output: 100,
        ..Limits::default()
    };
    let r = Renderer::new(src.clone(), "h".into(), limits);
    let c = r
        .compile("<% try { %><% for x in sql(\"SELECT n FROM nums\") { %>abcdefg<%= x.n %><% } %><% } catch {} %>")
        .unwrap();
    assert!(r.render(&c).unwrap().output.len() <= 100);
    // Not a query result: iterated as written.
    assert_eq!(
        render(
            &src,
            "<% for x in [#{a: 1}, #{a: 2}] { %><%= x.a %>;<% } %>"
        )
        .unwrap(),
        "1;2;"
    );
}
