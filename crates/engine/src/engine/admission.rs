//! Admission: a job or tenant spec is checked and interned on arrival (could it ever fit the
//! known nodes?), and each pass checks a job against its tenant's limits before placing it.

use super::*;

/// Which node constraints admission applies when it asks whether a group could ever fit;
/// leaving one out tells whether it is the one that makes the group impossible.
#[derive(Clone, Copy)]
struct Checks {
    labels: bool,
    taints: bool,
    per_node: bool,
    spread: bool,
}

impl Checks {
    const ALL: Checks = Checks {
        labels: true,
        taints: true,
        per_node: true,
        spread: true,
    };
    const NONE: Checks = Checks {
        labels: false,
        taints: false,
        per_node: false,
        spread: false,
    };
    const WITHOUT_LABELS: Checks = Checks {
        labels: false,
        ..Checks::ALL
    };
    const WITHOUT_TAINTS: Checks = Checks {
        taints: false,
        ..Checks::ALL
    };
    const WITHOUT_PER_NODE: Checks = Checks {
        per_node: false,
        ..Checks::ALL
    };
}

/// What admission concluded about a shape against the known topology.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct StaticFit {
    pub(super) epoch: u64,
    /// Fits on all known nodes (None) or why not.
    pub(super) known: Option<String>,
    /// Fits on nodes that are up right now.
    pub(super) up: bool,
}

impl Engine {
    pub(super) fn upsert_tenant(&mut self, spec: TenantSpec) -> Result<(), SpecError> {
        spec.validate(&self.catalog)?;
        match self.tenant_by_name.get(&spec.name) {
            Some(&t) => {
                self.tenants[t as usize].update(spec, &self.catalog, &self.site_jurisdictions)
            }
            None => {
                if self.tenants.len() >= u16::MAX as usize {
                    return Err(SpecError::new("name", "too many tenants"));
                }
                self.tenant_by_name
                    .insert(spec.name.clone(), self.tenants.len() as TenantIdx);
                self.tenants
                    .push(Tenant::new(spec, &self.catalog, &self.site_jurisdictions));
                self.queues.add_tenant();
            }
        }
        Ok(())
    }

    pub(super) fn submit(
        &mut self,
        id: JobId,
        tenant: &str,
        spec: JobSpec,
        out: &mut Vec<Decision>,
    ) -> Result<(), EngineError> {
        if self.jobs.contains_key(&id) {
            return Err(EngineError::DuplicateJob(id));
        }
        let mut job = Job {
            id,
            tenant: 0,
            priority: spec.priority.unwrap_or_default(),
            preemptible: spec.preemptible,
            submit_s: self.now_s,
            estimate_s: spec.runtime_estimate_s,
            limit_s: spec.runtime_limit_s,
            max_retries: spec.max_retries.unwrap_or(self.cfg.default_max_retries),
            fail_fast: spec.on_task_failure == gosok_model::OnTaskFailure::FailJob,
            retries: 0,
            shape: 0,
            state: JobState::Pending,
            attempt: 0,
            started_s: 0,
            tasks: Vec::new(),
            preemptions: 0,
            class: 0,
            order_s: 0,
            run_s: 0,
            overhead_s: 0,
            attained_milli_s: 0,
            name_key: spec
                .name
                .as_deref()
                .map_or(0, crate::gittins::name_family_key),
        };
        let admitted = self.admit(tenant, &spec).and_then(|(t, shape)| {
            job.tenant = t;
            if spec.priority.is_none() {
                job.priority = self.tenants[t as usize].default_priority;
            }
            let sid = self.intern(shape);
            job.shape = sid;
            if let Some(reason) = self.static_fit_of(sid).known {
                return Err(reason);
            }
            job.class = self.queues.class(ClassKey {
                shape: sid,
                priority: job.priority,
                preemptible: job.preemptible,
            });
            Ok(sid)
        });
        match admitted {
            Err(reason) => {
                job.state = JobState::Rejected;
                self.jobs.insert(id, job);
                out.push(Decision::Reject { job: id, reason });
            }
            Ok(sid) => {
                for g in self.shapes[sid as usize].groups.iter() {
                    self.demand_totals.add(g);
                }
                self.profile_dirty |= self.demand_totals.grown();
                job.order_s = self.order_key(&job);
                self.queues.push(job.tenant, job.class, job.pending());
                self.jobs.insert(id, job);
            }
        }
        Ok(())
    }

    /// Turns a spec into a shape, or says which constraint makes it impossible.
    fn admit(&self, tenant: &str, spec: &JobSpec) -> Result<(TenantIdx, Shape), String> {
        spec.validate().map_err(|e| e.to_string())?;
        let &t = self
            .tenant_by_name
            .get(tenant)
            .ok_or_else(|| format!("tenant: {tenant:?} is not known"))?;
        let ten = &self.tenants[t as usize];
        let all_models = ModelSet::all(self.catalog.len());
        let mut groups = Vec::with_capacity(spec.groups.len());
        for (i, g) in spec.groups.iter().enumerate() {
            let accel = match (g.accelerators, g.accelerator_milli) {
                (Some(0), _) | (None, None) => AccelReq::None,
                (Some(k), _) => AccelReq::Whole(k as u16),
                (None, Some(m)) => AccelReq::Milli(m as u16),
            };
            let mut models = if g.models.is_empty() {
                all_models
            } else {
                let mut s = ModelSet::default();
                for (j, name) in g.models.iter().enumerate() {
                    let ids = self.catalog.matching(name);
                    if ids.is_empty() {
                        return Err(format!(
                            "groups[{i}].models[{j}]: {name:?} is neither a model nor a class in the accelerator catalog"
                        ));
                    }
                    s = ids.into_iter().fold(s, ModelSet::with);
                }
                s
            };
            if accel == AccelReq::None {
                models = ModelSet::default();
            } else {
                if g.min_hbm_gib > 0 {
                    models = models
                        .iter()
                        .filter(|&m| self.catalog.get(m).hbm_gib as u64 >= g.min_hbm_gib)
                        .fold(ModelSet::default(), ModelSet::with);
                    if models.is_empty() {
                        return Err(format!(
                            "groups[{i}].min_hbm_gib: no acceptable model has {} GiB of HBM",
                            g.min_hbm_gib
                        ));
                    }
                }
                if let AccelReq::Milli(_) = accel {
                    models = models
                        .iter()
                        .filter(|&m| self.catalog.get(m).shareable)
                        .fold(ModelSet::default(), ModelSet::with);
                    if models.is_empty() {
                        return Err(format!(
                            "groups[{i}].accelerator_milli: none of the acceptable models can be shared in fractions; ask for whole accelerators"
                        ));
                    }
                }
                let need = accel.milli() * g.replicas;
                if !models
                    .iter()
                    .any(|m| ten.quota_could_ever_allow(m, need, spec.preemptible))
                {
                    let what = if spec.preemptible {
                        "quota plus borrowing limit"
                    } else {
                        "guaranteed quota (non-preemptible jobs may not borrow)"
                    };
                    return Err(format!(
                        "groups[{i}]: needs {} accelerators, more than the tenant's {what} for any acceptable model",
                        need as f64 / 1000.0
                    ));
                }
            }
            groups.push(GroupReq {
                replicas: g.replicas as u32,
                accel,
                models,
                cpu_milli: g.cpu_milli,
                mem_mib: g.mem_mib,
            });
        }
        let c = &spec.constraints;
        for (j, s) in c.sites.iter().enumerate() {
            if !self.cluster.site_by_name.contains_key(s) {
                return Err(format!("constraints.sites[{j}]: site {s:?} is not known"));
            }
        }
        let mut sites = 0u64;
        for (i, site) in self.cluster.sites.iter().enumerate() {
            let ok = (c.sites.is_empty() || c.sites.iter().any(|s| **s == *site.name))
                && (c.regions.is_empty() || c.regions.contains(&site.region))
                && (c.jurisdictions.is_empty() || c.jurisdictions.contains(&site.jurisdiction))
                && ten.sites.contains(i as u16);
            if ok {
                sites |= 1 << i;
            }
        }
        if sites == 0 {
            return Err(if ten.spec.allowed_jurisdictions.is_empty() {
                "constraints: no site matches the sites, regions and jurisdictions asked for together".to_string()
            } else {
                format!(
                    "constraints: no site matches the constraints within the tenant's allowed jurisdictions ({})",
                    ten.spec.allowed_jurisdictions.join(", ")
                )
            });
        }
        let total = spec.total_accelerator_milli();
        let cap = (ten.share_cap * self.cluster.known_accel_milli as f64) as u64;
        if total > cap {
            return Err(format!(
                "share cap: needs {} accelerators, more than the tenant's share cap of {:.0}% of the highway ({} accelerators)",
                total as f64 / 1000.0,
                ten.share_cap * 100.0,
                cap as f64 / 1000.0
            ));
        }
        let rules = NodeRules::of(c).map_err(|e| e.to_string())?;
        Ok((
            t,
            Shape {
                groups: groups.into_boxed_slice(),
                sites: SiteSet(sites),
                topology: c.topology,
                rules: rules.map(Box::new),
            },
        ))
    }

    fn intern(&mut self, shape: Shape) -> ShapeId {
        if let Some(&id) = self.shape_ids.get(&shape) {
            return id;
        }
        let id = self.shapes.len() as ShapeId;
        self.shape_ids.insert(shape.clone(), id);
        self.shapes.push(shape);
        self.static_fit.push(None);
        id
    }

    /// Whether a shape fits the known topology (else jobs of it are rejected) and the nodes
    /// that are up now (else they wait with that reason). Cached per shape until the
    /// topology changes.
    pub(super) fn static_fit_of(&mut self, sid: ShapeId) -> StaticFit {
        if let Some(f) = &self.static_fit[sid as usize]
            && f.epoch == self.cluster.epoch
        {
            return f.clone();
        }
        let shape = &self.shapes[sid as usize];
        let known = self.fits_nodes(shape, false);
        let up = known.is_ok() && self.fits_nodes(shape, true).is_ok();
        let f = StaticFit {
            epoch: self.cluster.epoch,
            known: known.err(),
            up,
        };
        self.static_fit[sid as usize] = Some(f.clone());
        f
    }

    fn fits_nodes(&self, shape: &Shape, up_only: bool) -> Result<(), String> {
        let level = shape
            .topology
            .filter(|t| t.mode == gosok_model::TopologyMode::Required)
            .map(|t| t.level);
        let no_rules = NodeRules {
            node_labels: Vec::new(),
            tolerations: Vec::new(),
            max_per_node: None,
            spread: None,
            group: None,
        };
        let r = shape.rules.as_deref().unwrap_or(&no_rules);
        for g in shape.groups.iter() {
            let best = self.room_for(shape, g, up_only, Checks::ALL);
            let fits = |c: Checks| self.room_for(shape, g, up_only, c) >= g.replicas as u64;
            if best >= g.replicas as u64 {
                continue;
            }
            // Name the constraint whose absence would let it fit (taints before the selector:
            // a selector that matches only tainted nodes is kept out by the taints).
            let what = self.describe_group(g);
            let message = if !fits(Checks::NONE) {
                let place =
                    level.map_or("on the highway".to_string(), |l| l.describe().to_string());
                format!(
                    "topology: {what} can never run: the allowed sites have room for {best} such replicas {place}"
                )
            } else if fits(Checks::WITHOUT_TAINTS) {
                let tolerated: Vec<String> = r.tolerations.iter().map(|t| t.to_string()).collect();
                format!(
                    "taints: {what} can never run: the nodes that could host it carry taints it does not tolerate (constraints.tolerations: {})",
                    if tolerated.is_empty() {
                        "none".to_string()
                    } else {
                        tolerated.join(", ")
                    }
                )
            } else if !r.node_labels.is_empty() && fits(Checks::WITHOUT_LABELS) {
                let labels: Vec<String> = r
                    .node_labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!(
                    "constraints.node_labels: {what} can never run: the nodes of the allowed sites with the labels {} have room for {best}",
                    labels.join(", ")
                )
            } else if r.max_per_node.is_some() && fits(Checks::WITHOUT_PER_NODE) {
                format!(
                    "constraints.max_replicas_per_node: {what} can never run: with at most {} per node the allowed nodes have room for {best}",
                    r.max_per_node.unwrap_or(0)
                )
            } else {
                let (l, m) = r.spread.unwrap_or((TopologyLevel::Rack, 0));
                format!(
                    "constraints.spread: {what} can never run: with at most {m} per {} the allowed nodes have room for {best}",
                    if l == TopologyLevel::Site {
                        "site"
                    } else {
                        "rack"
                    }
                )
            };
            return Err(message);
        }
        Ok(())
    }

    /// Replicas of `g` the best topology unit could hold on empty nodes, applying the
    /// node constraints `checks` names.
    fn room_for(&self, shape: &Shape, g: &GroupReq, up_only: bool, checks: Checks) -> u64 {
        let cluster = &self.cluster;
        let level = shape
            .topology
            .filter(|t| t.mode == gosok_model::TopologyMode::Required)
            .map(|t| t.level);
        let rules = shape.rules.as_deref();
        let models: Vec<Option<ModelId>> = if g.accel == AccelReq::None {
            vec![None]
        } else {
            g.models.iter().map(Some).collect()
        };
        let wants_accel = g.accel != AccelReq::None;
        let mut best = 0u64;
        for m in models {
            let nodes = (0..cluster.nodes.len() as NodeIdx).filter(|&n| {
                let node = &cluster.nodes[n as usize];
                shape.sites.contains(node.site) && (!up_only || node.state == NodeState::Up)
            });
            let per_node = |n: NodeIdx| {
                let node = &cluster.nodes[n as usize];
                if checks.labels && !constraints::labels_match(node, rules)
                    || checks.taints && !constraints::taints_tolerated(node, rules, wants_accel)
                {
                    return 0;
                }
                let h = placement::hostable_when_empty(cluster, n, g, m);
                match rules
                    .and_then(|r| r.max_per_node)
                    .filter(|_| checks.per_node)
                {
                    Some(max) => h.min(max as u64),
                    None => h,
                }
            };
            let spread = rules.and_then(|r| r.spread).filter(|_| checks.spread);
            best = best.max(placement::largest_unit(
                cluster, nodes, level, spread, per_node,
            ));
        }
        best
    }

    fn describe_group(&self, g: &GroupReq) -> String {
        let names: Vec<&str> = g
            .models
            .iter()
            .map(|m| self.catalog.get(m).name.as_str())
            .collect();
        let models = if g.models == ModelSet::all(self.catalog.len()) || names.is_empty() {
            "any accelerator".to_string()
        } else {
            names.join("|")
        };
        match g.accel {
            AccelReq::None => format!("{} × CPU-only replica", g.replicas),
            AccelReq::Whole(k) => format!("{} × {k} {models}", g.replicas),
            AccelReq::Milli(m) => format!("{} × {:.3} of {models}", g.replicas, m as f64 / 1000.0),
        }
    }

    /// "needs 64 × 8 H100 in one scale-up domain".
    pub fn describe_needs(&self, id: JobId) -> Option<String> {
        let job = self.jobs.get(&id)?;
        let shape = &self.shapes[job.shape as usize];
        let groups: Vec<String> = shape
            .groups
            .iter()
            .map(|g| self.describe_group(g))
            .collect();
        let mut s = format!("needs {}", groups.join(" + "));
        if let Some(t) = shape.topology {
            s.push(' ');
            s.push_str(t.level.describe());
            if t.mode == gosok_model::TopologyMode::Preferred {
                s.push_str(" (preferred)");
            }
        }
        if let Some(r) = shape.rules.as_deref() {
            s.push_str(&constraints::describe(r));
        }
        Some(s)
    }

    /// The models the job's tenant may use for it now, or why its tenant's limits stop it:
    /// share cap first, then quotas (a non-preemptible job only within the guarantee).
    pub(super) fn tenant_limits(&self, id: JobId) -> Result<ModelSet, WaitReason> {
        let job = &self.jobs[&id];
        let tenant = &self.tenants[job.tenant as usize];
        let shape = &self.shapes[job.shape as usize];
        let total = shape.accel_milli_total();
        if total > 0
            && tenant.share_cap < 1.0
            && tenant.alloc[0] + total
                > (tenant.share_cap * self.cluster.usable_accel_milli as f64) as u64
        {
            return Err(WaitReason::ShareCap);
        }
        let mut allowed = ModelSet::default();
        for g in shape.groups.iter().filter(|g| g.accel != AccelReq::None) {
            let present = g.models.and(self.cluster.present_models);
            let need = g.accel_milli_total();
            let ok = present
                .iter()
                .filter(|&m| tenant.quota_allows(m, need, job.preemptible))
                .fold(ModelSet::default(), ModelSet::with);
            if ok.is_empty() {
                let guarantee_only =
                    !job.preemptible && present.iter().any(|m| tenant.quota_allows(m, need, true));
                return Err(if guarantee_only {
                    WaitReason::GuaranteeUsed
                } else {
                    WaitReason::Quota
                });
            }
            allowed = ModelSet(allowed.0 | ok.0);
        }
        Ok(allowed)
    }
}
