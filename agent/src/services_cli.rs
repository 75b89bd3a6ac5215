//! `corrosion services register|deregister` and `corrosion maint`: the
//! agent API's registration routes from the command line, as `consul
//! services` and `consul maint` do it (definition files in Consul's JSON or
//! HCL format, parsed here with the agent's own parser, so a bad file is
//! refused before anything is sent).

#![allow(clippy::print_stdout, reason = "command output")]

use std::path::Path;

use corro_client::Client;
use serde_json::{Map, Value, json};

/// The service bodies of a definition file.
pub(crate) fn bodies_of(file: &Path) -> anyhow::Result<Vec<Value>> {
    corro_registry::files::parse_file(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))
}

/// One service from `--name` and friends.
pub(crate) fn from_flags(
    name: String,
    id: Option<String>,
    address: Option<String>,
    port: Option<u16>,
    tags: Vec<String>,
    meta: Vec<String>,
) -> anyhow::Result<Value> {
    let mut m = Map::new();
    for kv in meta {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("--meta {kv:?}: expected KEY=VALUE"))?;
        m.insert(k.to_string(), json!(v));
    }
    let mut body = json!({"Name": name, "Tags": tags, "Meta": m});
    let o = body.as_object_mut().expect("an object");
    if let Some(id) = id {
        o.insert("ID".into(), json!(id));
    }
    if let Some(a) = address {
        o.insert("Address".into(), json!(a));
    }
    if let Some(p) = port {
        o.insert("Port".into(), json!(p));
    }
    Ok(body)
}

fn id_of(body: &Value) -> String {
    corro_registry::ServiceDefinition::decode(body)
        .map(|d| d.id)
        .unwrap_or_default()
}

pub(crate) async fn register(client: &Client, bodies: Vec<Value>) -> anyhow::Result<()> {
    for b in bodies {
        let id = id_of(&b);
        client
            .consul_put("/v1/agent/service/register", Some(&b))
            .await
            .map_err(|e| anyhow::anyhow!("registering {id:?}: {e}"))?;
        println!("Registered service: {id}");
    }
    Ok(())
}

fn path_segment(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

/// A service ID, or (when `target` names an existing file) the services
/// that file defines.
pub(crate) async fn deregister(client: &Client, target: &str) -> anyhow::Result<()> {
    let ids: Vec<String> = if Path::new(target).is_file() {
        bodies_of(Path::new(target))?.iter().map(id_of).collect()
    } else {
        vec![target.to_string()]
    };
    for id in ids {
        client
            .consul_put(
                &format!("/v1/agent/service/deregister/{}", path_segment(&id)),
                None,
            )
            .await
            .map_err(|e| anyhow::anyhow!("deregistering {id:?}: {e}"))?;
        println!("Deregistered service: {id}");
    }
    Ok(())
}

/// `corrosion maint` alone, as `consul maint`: the node and the services
/// in maintenance, with their reasons.
pub(crate) async fn maint_list(client: &Client) -> anyhow::Result<()> {
    let checks = client.consul_get("/v1/agent/checks").await?;
    let Some(checks) = checks.as_object() else {
        anyhow::bail!("the agent's /v1/agent/checks is not an object");
    };
    for (id, c) in checks {
        let reason = c["Notes"].as_str().unwrap_or_default();
        if id == "_node_maintenance" {
            println!(
                "Node:\n  Name:   {}\n  Reason: {reason}",
                c["Node"].as_str().unwrap_or_default()
            );
        } else if let Some(service) = id.strip_prefix("_service_maintenance:") {
            println!("Service:\n  ID:     {service}\n  Reason: {reason}");
        }
    }
    Ok(())
}

pub(crate) async fn maint(
    client: &Client,
    enable: bool,
    service: Option<String>,
    reason: Option<String>,
) -> anyhow::Result<()> {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("enable", if enable { "true" } else { "false" });
    if let Some(r) = &reason {
        query.append_pair("reason", r);
    }
    let query = query.finish();
    let path = match &service {
        Some(s) => format!("/v1/agent/service/maintenance/{}?{query}", path_segment(s)),
        None => format!("/v1/agent/maintenance?{query}"),
    };
    client.consul_put(&path, None).await?;
    let what = service.map_or("Node".to_string(), |s| format!("Service {s:?}"));
    println!(
        "{what} maintenance is now {}",
        if enable { "enabled" } else { "disabled" }
    );
    Ok(())
}
