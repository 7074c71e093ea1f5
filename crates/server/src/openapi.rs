//! GET /v1/openapi.json: an OpenAPI 3 document generated from the route table
//! ([`crate::api::routes`]) and the schemas of the types the handlers read and write.

use serde_json::{Map, Value, json};

use crate::api::{Access, Route};

fn obj(props: Value, required: &[&str]) -> Value {
    json!({"type": "object", "additionalProperties": false, "properties": props, "required": required})
}

fn open_obj(props: Value) -> Value {
    json!({"type": "object", "properties": props})
}

fn arr(items: Value) -> Value {
    json!({"type": "array", "items": items})
}

fn r(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn int() -> Value {
    json!({"type": "integer", "minimum": 0})
}
fn num() -> Value {
    json!({"type": "number"})
}
fn s() -> Value {
    json!({"type": "string"})
}
fn nullable(t: &str) -> Value {
    json!({"type": [t, "null"]})
}

/// The schemas, by name. Field names and bounds follow gosok_model's types.
pub fn schemas() -> Map<String, Value> {
    let job_state = json!({"type": "string", "enum": ["pending", "held", "running", "succeeded", "failed", "timed_out", "cancelled", "rejected"]});
    let priority =
        json!({"type": "string", "enum": ["scavenger", "low", "normal", "high", "critical"]});
    let max_priority = json!({"type": ["string", "null"], "enum": ["scavenger", "low", "normal", "high", "critical", null],
        "description": "the highest class the tenant's tokens may submit at (null: normal, or default_priority if higher); operators only"});
    let tier = json!({"type": "string", "enum": ["anchor", "commercial", "public", "academic", "startup"]});
    let node_state = json!({"type": "string", "enum": ["up", "draining", "down"]});
    let names = arr(s());
    let group = obj(
        json!({
            "name": s(), "replicas": {"type": "integer", "minimum": 1, "maximum": gosok_model::job::MAX_REPLICAS},
            "accelerators": {"type": "integer", "minimum": 0, "maximum": gosok_model::job::MAX_ACCELERATORS_PER_REPLICA},
            "accelerator_milli": {"type": "integer", "minimum": 1, "maximum": 999},
            "models": names, "min_hbm_gib": int(), "cpu_milli": int(), "mem_mib": int(),
        }),
        &[],
    );
    let constraints = obj(
        json!({
            "sites": arr(s()), "regions": arr(s()), "jurisdictions": arr(s()),
            "topology": obj(json!({
                "level": {"type": "string", "enum": ["node", "scale_up_domain", "rack", "site"]},
                "mode": {"type": "string", "enum": ["required", "preferred"]},
            }), &["level"]),
        }),
        &[],
    );
    let spec_props = json!({
        "name": s(), "groups": {"type": "array", "minItems": 1, "maxItems": gosok_model::job::MAX_GROUPS, "items": group},
        "priority": priority, "preemptible": {"type": "boolean"},
        "runtime_estimate_s": int(), "runtime_limit_s": int(), "max_retries": int(),
        "on_task_failure": {"type": "string", "enum": ["fail_job", "continue"]},
        "constraints": constraints,
    });
    let mut submission_props = spec_props.clone();
    submission_props["command"] = arr(s());
    submission_props["env"] = json!({"type": "object", "additionalProperties": s()});
    submission_props["workdir"] = s();
    submission_props["array"] = json!({"type": "string", "description": "a job array: \"0-99%8\" (indices, at most 8 eligible at once); each task gets GOSOK_ARRAY_TASK_ID"});
    submission_props["dependency"] = json!({"type": "string", "description": "afterok:ID[:ID], afterany:ID, afternotok:ID, singleton; comma-separated, all must hold"});
    submission_props["hold"] =
        json!({"type": "boolean", "description": "submit held: not started until released"});
    let job = open_obj(json!({
        "id": int(), "tenant": s(), "name": nullable("string"), "state": job_state,
        "accelerators": num(), "submitted_at_ms": int(), "ended_at_ms": nullable("integer"),
        "attempt": int(), "spec": obj(spec_props, &["groups"]), "command": arr(s()),
        "array_job_id": int(), "array_task_id": int(), "dependency": s(),
        "placement": arr(open_obj(json!({"task": int(), "group": int(), "node": s(),
            "model": nullable("string"), "devices": arr(int()), "milli": int()}))),
        "events": arr(open_obj(json!({"at_ms": int(), "event": s(), "detail": s()}))),
        "reason": nullable("string"),
        "wait": open_obj(json!({"position": nullable("integer"), "reason": {"type": "object"},
            "text": s(), "estimated_start_s": nullable("integer")})),
    }));
    let site = obj(
        json!({"name": s(), "region": s(), "jurisdiction": s(), "power_budget_mw": num(), "pue": num()}),
        &["name", "region", "jurisdiction", "power_budget_mw", "pue"],
    );
    let rack = obj(
        json!({"name": s(), "site": s(), "power_cap_kw": num(), "scale_up_domain": s()}),
        &["name", "site", "power_cap_kw"],
    );
    let node_spec = obj(
        json!({"name": s(), "rack": s(), "count": int(), "cpu_cores": int(), "mem_mib": int(),
               "accelerator": s(), "accelerators": int(), "base_power_w": int(),
               "labels": {"type": "object", "additionalProperties": s()}, "state": node_state}),
        &["name", "rack", "cpu_cores", "mem_mib"],
    );
    let quota = obj(
        json!({"accelerator": s(), "guaranteed": int(), "borrow_limit": int()}),
        &["accelerator", "guaranteed"],
    );
    let tenant = obj(
        json!({"name": s(), "tier": tier, "weight": num(), "quotas": arr(quota.clone()),
               "allowed_jurisdictions": arr(s()), "share_cap": num(), "default_priority": priority,
               "max_priority": max_priority, "max_pending_jobs": nullable("integer"),
               "max_job_bytes": nullable("integer"), "max_stored_bytes": nullable("integer"),
               "pending": int(), "stored_bytes": int()}),
        &["name", "tier"],
    );
    let model = obj(
        json!({"name": s(), "vendor": s(), "class": s(), "hbm_gib": int(), "board_power_w": int(),
               "relative_throughput": num(), "shareable": {"type": "boolean"}, "aliases": arr(s()),
               "source": s()}),
        &[
            "name",
            "vendor",
            "class",
            "hbm_gib",
            "board_power_w",
            "relative_throughput",
            "shareable",
            "source",
        ],
    );
    let token = open_obj(
        json!({"id": s(), "tenant": nullable("string"), "created_at_ms": int(), "revoked": {"type": "boolean"}}),
    );
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.to_string(), v);
    };
    put(
        "Error",
        obj(
            json!({"error": obj(json!({"code": s(), "message": s(), "field": nullable("string")}), &["code", "message"])}),
            &["error"],
        ),
    );
    put(
        "Health",
        open_obj(
            json!({"status": {"type": "string", "enum": ["ok", "degraded"],
                                   "description": "degraded: below the disk watermark, new submissions get 507"},
                        "log_seq": int(), "durable_seq": int(), "connections": int(),
                        "disk": open_obj(json!({"free_bytes": int(), "total_bytes": int(),
                                                "watermark_bytes": int(), "low": {"type": "boolean"}}))}),
        ),
    );
    put(
        "Metrics",
        json!({"type": "string", "description": "Prometheus text exposition format"}),
    );
    put("OpenApi", json!({"type": "object"}));
    put("JobSubmission", obj(submission_props, &["groups"]));
    put("Job", job.clone());
    put("Requeue", obj(json!({"hold": {"type": "boolean"}}), &[]));
    put(
        "JobList",
        obj(
            json!({"jobs": arr(r("Job")), "next_cursor": nullable("string")}),
            &["jobs"],
        ),
    );
    put(
        "Queue",
        obj(
            json!({"now_s": int(), "total": int(), "jobs": arr(open_obj(json!({
                "position": int(), "id": int(), "tenant": s(), "name": nullable("string"),
                "accelerators": num(), "submitted_at_ms": int(), "reason": {"type": ["object", "null"]},
                "text": nullable("string"), "estimated_start_s": nullable("integer")})))}),
            &["jobs"],
        ),
    );
    put(
        "Cluster",
        obj(
            json!({"site": arr(site.clone()), "rack": arr(rack.clone()), "node": arr(node_spec), "tenant": arr(tenant.clone())}),
            &[],
        ),
    );
    put(
        "TopologyResult",
        open_obj(
            json!({"changed": arr(s()), "dry_run": {"type": "boolean"}, "decisions": arr(json!({"type": "object"}))}),
        ),
    );
    put("Site", site);
    put(
        "SiteList",
        open_obj(
            json!({"sites": arr(open_obj(json!({"name": s(), "power_budget_w": int(), "power_draw_w": int()})))}),
        ),
    );
    put(
        "SiteUpdate",
        obj(json!({"power_budget_mw": num()}), &["power_budget_mw"]),
    );
    put(
        "PowerResult",
        open_obj(
            json!({"shed": arr(json!({"type": "object"})), "decisions": arr(json!({"type": "object"}))}),
        ),
    );
    put("Rack", rack);
    put(
        "RackList",
        open_obj(
            json!({"racks": arr(open_obj(json!({"name": s(), "power_cap_w": int(), "it_draw_w": int()})))}),
        ),
    );
    put(
        "RackUpdate",
        obj(json!({"power_cap_kw": num()}), &["power_cap_kw"]),
    );
    put(
        "Node",
        open_obj(
            json!({"name": s(), "site": s(), "rack": s(), "state": node_state, "model": nullable("string"),
            "accelerators": int(), "accelerators_allocated": num(),
            "isolation": nullable("string")}),
        ),
    );
    put("NodeList", open_obj(json!({"nodes": arr(r("Node"))})));
    put("AcceleratorModel", model);
    put(
        "Catalog",
        open_obj(json!({"models": arr(r("AcceleratorModel"))})),
    );
    put("Tenant", tenant);
    put(
        "TenantUpdate",
        obj(
            json!({"tier": tier, "weight": num(), "quotas": arr(quota), "allowed_jurisdictions": arr(s()),
                   "share_cap": num(), "default_priority": priority, "max_priority": max_priority,
                   "max_pending_jobs": int(), "max_job_bytes": int(), "max_stored_bytes": int()}),
            &[],
        ),
    );
    put("TenantList", open_obj(json!({"tenants": arr(r("Tenant"))})));
    put(
        "NewToken",
        obj(
            json!({"id": s(), "tenant": nullable("string"), "agent": {"type": "boolean"}, "token": s()}),
            &["id", "tenant", "token"],
        ),
    );
    put(
        "Logs",
        json!({"type": "string", "format": "binary", "description": "the bytes of the task's stdout or stderr from `offset`; header X-Gosok-Log-Size gives the file's length"}),
    );
    let node_epoch = obj(json!({"name": s(), "epoch": int()}), &["name", "epoch"]);
    let labels = json!({"type": "object", "additionalProperties": s()});
    put(
        "AgentRegister",
        obj(
            json!({"agent": s(), "address": s(), "logs_url": s(), "logs_secret": s(),
                   "nodes": arr(obj(json!({"name": s(), "site": s(), "rack": s(), "cpu_cores": int(),
                        "mem_mib": int(), "accelerator": s(), "accelerators": int(), "labels": labels}),
                        &["name", "site", "rack", "cpu_cores", "mem_mib"]))}),
            &["agent", "address", "logs_url", "logs_secret", "nodes"],
        ),
    );
    put(
        "AgentRegistered",
        obj(
            json!({"lease_ms": int(), "nodes": arr(node_epoch.clone())}),
            &["lease_ms", "nodes"],
        ),
    );
    put(
        "AgentSync",
        obj(
            json!({"agent": s(), "nodes": arr(node_epoch), "version": int(), "wait_ms": int(),
                   "logs_url": s(), "logs_secret": s()}),
            &["agent", "nodes", "logs_url", "logs_secret"],
        ),
    );
    put(
        "AgentAssignments",
        obj(
            json!({"version": int(), "lease_ms": int(),
                   "nodes": arr(obj(json!({"name": s(), "epoch": int(), "valid": {"type": "boolean"}}), &["name", "epoch", "valid"])),
                   "tasks": arr(obj(json!({"node": s(), "epoch": int(), "job": int(), "attempt": int(), "task": int(),
                        "command": arr(s()), "workdir": nullable("string"),
                        "env": {"type": "object", "additionalProperties": s()},
                        "limit_s": nullable("integer"), "grace_s": int(),
                        "tenant": s(), "mem_mib": int(), "cpu_milli": int()}),
                        &["node", "epoch", "job", "attempt", "task", "command", "env", "grace_s"]))}),
            &["version", "lease_ms", "nodes", "tasks"],
        ),
    );
    put(
        "AgentReports",
        obj(
            json!({"agent": s(), "reports": arr(obj(json!({"node": s(), "epoch": int(), "job": int(),
                "attempt": int(), "task": int(), "exit_code": nullable("integer"), "signal": nullable("integer"),
                "reason": {"type": "string", "enum": ["exited", "limit", "spawn_failed", "out_of_memory"]}, "message": s()}),
                &["node", "epoch", "job", "attempt", "task", "reason"]))}),
            &["agent", "reports"],
        ),
    );
    put(
        "AgentReportResults",
        obj(
            json!({"results": arr(obj(json!({"job": int(), "task": int(), "accepted": {"type": "boolean"},
                "code": s(), "message": s()}), &["job", "task", "accepted"]))}),
            &["results"],
        ),
    );
    put("Token", token.clone());
    put("TokenList", open_obj(json!({"tokens": arr(token)})));
    put(
        "AuditLog",
        open_obj(
            json!({"events": arr(open_obj(json!({"seq": int(), "at_ms": int(), "kind": s(), "entry": {"type": "object"}}))),
            "next_after": nullable("integer")}),
        ),
    );
    m
}

/// The OpenAPI document for `routes`.
pub fn document(routes: &[Route]) -> Value {
    let mut paths = Map::new();
    for rt in routes {
        let mut params = Vec::new();
        for seg in rt.path.split('/') {
            if let Some(name) = seg.strip_prefix('{').and_then(|x| x.strip_suffix('}')) {
                params.push(json!({"name": name, "in": "path", "required": true, "schema": s()}));
            }
        }
        for (name, desc) in rt.query {
            params.push(json!({"name": name, "in": "query", "required": false, "description": desc, "schema": s()}));
        }
        for (name, desc) in rt.headers {
            params.push(json!({"name": name, "in": "header", "required": false, "description": desc, "schema": s()}));
        }
        let ok_content = if rt.response == "Metrics" {
            json!({"text/plain": {"schema": r(rt.response)}})
        } else if rt.response == "Logs" {
            json!({"application/octet-stream": {"schema": r(rt.response)}})
        } else {
            json!({"application/json": {"schema": r(rt.response)}})
        };
        let mut op = json!({
            "operationId": format!("{}_{}", rt.method, rt.path.trim_start_matches('/').replace(['/', '{', '}', '.'], "_")),
            "summary": rt.summary,
            "parameters": params,
            "responses": {
                rt.status.to_string(): {"description": "success", "content": ok_content},
                "default": {"description": "an error", "content": {"application/json": {"schema": r("Error")}}},
            },
        });
        match rt.access {
            Access::Public => op["security"] = json!([]),
            Access::Token => {}
            Access::Admin => {
                op["description"] = json!("Needs an operator (admin) token.");
            }
            Access::Agent => {
                op["description"] =
                    json!("Needs a node-agent token (or an admin token); see docs/AGENTS.md.");
            }
        }
        if let Some(req) = rt.request {
            let mut content = json!({"application/json": {"schema": r(req)}});
            if req == "Cluster" {
                content["application/toml"] = json!({"schema": {"type": "string"}});
            }
            op["requestBody"] = json!({"required": true, "content": content});
        }
        let entry = paths
            .entry(rt.path.to_string())
            .or_insert_with(|| json!({}));
        entry[rt.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "gosok controller API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The control plane of a shared, multi-site AI compute highway. Errors are {\"error\": {\"code\", \"message\", \"field\"}}.",
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
    })
}
