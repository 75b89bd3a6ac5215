-- Service discovery tables (DESIGN §8), replicated to every agent.
--
-- The Consul bridge writes this host's services and checks here (rows with
-- source NULL); rows with a non-NULL source belong to another writer and the
-- bridge never touches them. Every agent upserts its own consul_nodes row.
-- JSON columns hold JSON text. Columns default to what a reader can use when
-- a change to a row arrives before the row's insert (see docs/DISCOVERY.md).

CREATE TABLE consul_services (
    node TEXT NOT NULL,
    id TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT '',
    tags TEXT NOT NULL DEFAULT '[]',
    meta TEXT NOT NULL DEFAULT '{}',
    port INTEGER NOT NULL DEFAULT 0,
    address TEXT NOT NULL DEFAULT '',
    weights TEXT NOT NULL DEFAULT '{"Passing":1,"Warning":1}',
    tagged_addresses TEXT NOT NULL DEFAULT '{}',
    updated_at INTEGER NOT NULL DEFAULT 0,
    source TEXT,
    PRIMARY KEY (node, id)
);

CREATE INDEX consul_services_name ON consul_services (name);

CREATE TABLE consul_checks (
    node TEXT NOT NULL,
    id TEXT NOT NULL,
    service_id TEXT NOT NULL DEFAULT '',
    service_name TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'critical',
    output TEXT NOT NULL DEFAULT '',
    notes TEXT NOT NULL DEFAULT '',
    type TEXT NOT NULL DEFAULT '',
    updated_at INTEGER NOT NULL DEFAULT 0,
    source TEXT,
    PRIMARY KEY (node, id)
);

CREATE TABLE consul_nodes (
    node TEXT NOT NULL PRIMARY KEY,
    actor_id TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    datacenter TEXT NOT NULL DEFAULT 'dc1',
    meta TEXT NOT NULL DEFAULT '{}',
    updated_at INTEGER NOT NULL DEFAULT 0
);

-- Which agents claim a node name, and since when: two live agents claiming
-- one name (two hosts with one hostname) would delete each other's rows, so
-- the bridge refuses to run on the one that started later.
CREATE TABLE consul_node_claims (
    node TEXT NOT NULL,
    actor_id TEXT NOT NULL,
    started_at INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (node, actor_id)
);

-- Consul's KV store (`/v1/kv`, `corrosion kv`, the templates' key helpers).
-- One row per key; a key's value is its bytes as given (any bytes, up to
-- 512 KiB through the API), `flags` Consul's opaque unsigned 64-bit number
-- stored as its two's-complement INTEGER (values above 2^63-1 read back
-- negative in plain SQL; the API shows them unsigned). Concurrent writes of
-- one key resolve by the store's last-writer-wins rules (docs/KV.md), and
-- CreateIndex/ModifyIndex are each agent's own, kept in memory.
CREATE TABLE consul_kv (
    key TEXT NOT NULL PRIMARY KEY,
    value BLOB NOT NULL DEFAULT x'',
    flags INTEGER NOT NULL DEFAULT 0
);
