//! The pages: each reads what it shows from the API (as the signed-in token) and renders the
//! page's `<main>`; `layout` wraps it. The live stream (`live.rs`) renders the same functions.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::http::StatusCode;
use serde_json::Value;

use super::charts::{self, MapSite};
use super::text::{self, Lang, Msg, accel, dec, esc, int, power_w, time_ms, url_part};
use super::{Console, Failure, PAGE_ROWS, Session};

/// A rendered page.
pub struct Rendered {
    pub title: String,
    pub main: String,
    /// Whether the page follows the highway live (a form page does not).
    pub live: bool,
}

/// The page at `path` with query `query`.
pub async fn render(
    cs: &Console,
    s: &Session,
    path: &str,
    query: Option<String>,
) -> Result<Rendered, Failure> {
    let raw = query.unwrap_or_default();
    let q = |allowed: &[&str]| super::form(raw.as_bytes(), allowed);
    match path {
        "/" => highway(cs, s).await,
        "/queue" => queue(cs, s, &q(&["page"])?).await,
        "/jobs" => jobs(cs, s, &q(&["state", "cursor"])?).await,
        "/submit" => Ok(Rendered {
            title: Msg::Submit.text(s.lang).into(),
            main: submit_form(cs, s, &BTreeMap::new(), None).await,
            live: false,
        }),
        "/tenants" => tenants(cs, s).await,
        "/nodes" => nodes(cs, s, &q(&["page", "state"])?).await,
        "/audit" => audit(cs, s, &q(&["before", "after"])?).await,
        p => match p.strip_prefix("/jobs/") {
            Some(id) => job(cs, s, id, &q(&["task", "stream"])?).await,
            None => Err(Failure::new(StatusCode::NOT_FOUND, format!("no page {p}"))),
        },
    }
}

// ---- layout --------------------------------------------------------------------------------

const NAV: &[(&str, Msg)] = &[
    ("/", Msg::Highway),
    ("/queue", Msg::Queue),
    ("/jobs", Msg::Jobs),
    ("/submit", Msg::Submit),
    ("/tenants", Msg::Tenants),
    ("/nodes", Msg::Nodes),
    ("/audit", Msg::Audit),
];

/// The whole document around a page's `main`. `live_path`: the page to follow live.
#[allow(clippy::too_many_arguments)]
pub fn layout(
    cs: &Console,
    s: Option<&Session>,
    lang: Lang,
    path: &str,
    title: &str,
    main: &str,
    flash: Option<&str>,
    live_path: Option<&str>,
) -> String {
    let mut nav = String::new();
    if let Some(s) = s {
        nav.push_str(&format!(
            "<nav aria-label=\"{}\"><ul>",
            Msg::MainNav.text(lang)
        ));
        for (href, m) in NAV {
            // The audit log is for operators: the API refuses it to tenants anyway.
            if *href == "/audit" && !s.admin {
                continue;
            }
            let here = *href == path || (*href == "/jobs" && path.starts_with("/jobs/"));
            let _ = write!(
                nav,
                "<li><a href=\"{href}\"{}>{}</a></li>",
                if here { " aria-current=\"page\"" } else { "" },
                m.text(lang)
            );
        }
        nav.push_str("</ul></nav>");
        let who = match &s.tenant {
            Some(t) => format!("{} {}", Msg::Tenant.text(lang), esc(t)),
            None => Msg::Operator.text(lang).to_string(),
        };
        let _ = write!(
            nav,
            "<div class=\"who\"><span>{} <strong>{who}</strong></span>\
             <form method=\"post\" action=\"/signout\">{}<button type=\"submit\" class=\"link\">{}</button></form>",
            Msg::SignedInAs.text(lang),
            s.csrf_field(),
            Msg::SignOut.text(lang)
        );
    } else {
        nav.push_str("<div class=\"who\">");
    }
    let next = live_path.unwrap_or(path);
    let _ = write!(
        nav,
        "<a href=\"/console/lang?to={}&amp;next={}\" lang=\"{}\">{}</a></div>",
        lang.other().code(),
        esc(&url_part(next)),
        lang.other().code(),
        lang.other().own_name()
    );
    let flash = flash.map_or(String::new(), |f| {
        format!("<p class=\"flash\" role=\"status\">{}</p>", esc(f))
    });
    let live = live_path.map_or(String::new(), |p| {
        format!(
            " data-live=\"{}\" data-hash=\"{}\"",
            esc(p),
            super::live::hash(main)
        )
    });
    format!(
        "<!doctype html><html lang=\"{code}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} · {console}</title>\
         <link rel=\"stylesheet\" href=\"/console/static/console.css?v={v}\">\
         <script src=\"/console/static/console.js?v={v}\" defer></script></head>\
         <body><a class=\"skip\" href=\"#main\">{skip}</a>\
         <header><a class=\"brand\" href=\"/\">gosok</a>{nav}</header>{flash}\
         <main id=\"main\" tabindex=\"-1\"{live}>{main}</main></body></html>",
        code = lang.code(),
        title = esc(title),
        console = Msg::Console.text(lang),
        v = cs.asset_version,
        skip = Msg::SkipToContent.text(lang),
    )
}

/// A bare page (a refused form), without the session's navigation.
pub fn layout_plain(lang: Lang, title: &str, main: &str) -> String {
    format!(
        "<!doctype html><html lang=\"{}\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{}</title><link rel=\"stylesheet\" href=\"/console/static/console.css\"></head>\
         <body><main id=\"main\">{main}<p><a href=\"/\">gosok</a></p></main></body></html>",
        lang.code(),
        esc(title)
    )
}

/// A table with a caption; `rows` are already rendered `<tr>`s.
fn table(caption: &str, heads: &[&str], rows: &str, lang: Lang) -> String {
    if rows.is_empty() {
        return format!(
            "<h2>{}</h2><p class=\"empty\">{}</p>",
            esc(caption),
            Msg::Nothing.text(lang)
        );
    }
    let mut h = String::new();
    for x in heads {
        let _ = write!(h, "<th scope=\"col\">{}</th>", esc(x));
    }
    format!(
        "<div class=\"scroll\"><table><caption>{}</caption><thead><tr>{h}</tr></thead><tbody>{rows}</tbody></table></div>",
        esc(caption)
    )
}

/// Links to other pages of a list: `(label, href)` pairs, omitted when None.
fn pager(lang: Lang, links: &[(Msg, Option<String>)], note: &str) -> String {
    let mut out = format!(
        "<nav class=\"pager\" aria-label=\"{}\">",
        Msg::Pagination.text(lang)
    );
    for (m, href) in links {
        match href {
            Some(h) => {
                let _ = write!(out, "<a href=\"{}\">{}</a>", esc(h), m.text(lang));
            }
            None => {
                let _ = write!(out, "<span aria-disabled=\"true\">{}</span>", m.text(lang));
            }
        }
    }
    let _ = write!(out, "<span class=\"note\">{}</span></nav>", esc(note));
    out
}

/// The highest page number asked of any list (50 rows a page: 5 × 10^9 rows), so that the
/// offset a page makes cannot overflow.
const MAX_PAGE: usize = 100_000_000;

fn page_number(q: &BTreeMap<String, String>, k: &str) -> Result<usize, Failure> {
    match q.get(k) {
        None => Ok(1),
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or_else(|| {
                Failure::new(
                    StatusCode::BAD_REQUEST,
                    format!("{k}: {v:?} is not a page number (1 to {MAX_PAGE})"),
                )
            }),
    }
}

fn state_name(lang: Lang, s: &str) -> String {
    let ko = match s {
        "pending" => "대기",
        "held" => "보류",
        "running" => "실행 중",
        "succeeded" => "성공",
        "failed" => "실패",
        "timed_out" => "시간 초과",
        "cancelled" => "취소됨",
        "rejected" => "거부됨",
        "up" => "가동",
        "draining" => "드레인 중",
        "down" => "중단",
        _ => "",
    };
    let shown = match lang {
        Lang::Ko if !ko.is_empty() => ko.to_string(),
        _ => s.replace('_', " "),
    };
    format!(
        "<span class=\"state state-{}\">{}</span>",
        esc(s),
        esc(&shown)
    )
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(0.0)
}

fn st(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

fn job_link(id: u64) -> String {
    format!("<a href=\"/jobs/{id}\">{id}</a>")
}

// ---- highway -------------------------------------------------------------------------------

async fn highway(cs: &Console, s: &Session) -> Result<Rendered, Failure> {
    let lang = s.lang;
    let sites = cs.get_json(s, "/v1/sites").await?;
    let racks = cs.get_json(s, "/v1/racks").await?;
    let sites = sites["sites"].as_array().cloned().unwrap_or_default();
    let racks = racks["racks"].as_array().cloned().unwrap_or_default();
    let mut main = format!("<h1>{}</h1>", Msg::Highway.text(lang));

    let map: Vec<MapSite> = sites
        .iter()
        .map(|x| MapSite {
            name: st(&x["name"]),
            region: st(&x["region"]),
            budget_w: f(&x["power_budget_w"]),
            draw_w: f(&x["power_draw_w"]),
        })
        .collect();
    let _ = write!(
        main,
        "<div class=\"overview\"><figure class=\"card\">{}<figcaption>{}</figcaption></figure><div class=\"sites\">",
        charts::site_map(&map, Msg::SitesMap.text(lang), Msg::OtherRegions.text(lang)),
        Msg::SitesMap.text(lang)
    );
    for x in &sites {
        let name = st(&x["name"]);
        let (draw, budget) = (f(&x["power_draw_w"]), f(&x["power_budget_w"]));
        let label = format!(
            "{name}: {} {} / {} {}",
            Msg::PowerDraw.text(lang),
            power_w(draw),
            Msg::Budget.text(lang),
            power_w(budget)
        );
        let _ = write!(
            main,
            "<section class=\"card site\" aria-labelledby=\"site-{id}\" id=\"site-card-{id}\">\
             <h2 id=\"site-{id}\">{name} <small>{region}</small></h2>\
             <p class=\"power\"><span class=\"power-figures\" data-site=\"{name}\">{draw} / {budget}</span> {bar}</p>\
             <dl><dt>{it}</dt><dd>{itw}</dd><dt>{pue}</dt><dd>{puev}</dd>\
             <dt>{acc}</dt><dd>{alloc} / {total}</dd></dl>",
            id = esc(&url_part(name)),
            name = esc(name),
            region = esc(st(&x["region"])),
            draw = esc(&power_w(draw)),
            budget = esc(&power_w(budget)),
            bar = charts::bar(draw, budget, &label),
            it = Msg::ItDraw.text(lang),
            itw = esc(&power_w(f(&x["it_draw_w"]))),
            pue = Msg::Pue.text(lang),
            puev = dec(f(&x["pue"]), 2),
            acc = Msg::Accelerators.text(lang),
            alloc = accel(f(&x["accelerators_allocated"])),
            total = accel(f(&x["accelerators"])),
        );
        if s.admin {
            let _ = write!(
                main,
                "<form method=\"post\" action=\"/sites/{u}/budget\" class=\"inline\">{csrf}\
                 <label for=\"budget-{u}\">{lbl}</label>\
                 <input id=\"budget-{u}\" name=\"power_budget_mw\" type=\"number\" step=\"0.001\" min=\"0\" inputmode=\"decimal\" value=\"{mw}\">\
                 <button type=\"submit\">{set}</button></form>",
                u = esc(&url_part(name)),
                csrf = s.csrf_field(),
                lbl = Msg::NewBudgetMw.text(lang),
                mw = f(&x["power_budget_mw"]),
                set = Msg::SetBudget.text(lang),
            );
        }
        main.push_str("</section>");
    }
    main.push_str("</div></div>");

    // Racks: each rack's IT draw against its cap (a long list is cut to a page).
    let mut rows = String::new();
    for r in racks.iter().take(200) {
        let (draw, cap) = (f(&r["it_draw_w"]), f(&r["power_cap_w"]));
        let label = format!("{}: {} / {}", st(&r["name"]), power_w(draw), power_w(cap));
        let _ = write!(
            rows,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
            esc(st(&r["name"])),
            esc(st(&r["site"])),
            esc(&power_w(draw)),
            esc(&power_w(cap)),
            charts::bar(draw, cap, &label),
            int(r["nodes"].as_u64().unwrap_or(0)),
        );
    }
    let more = racks.len().saturating_sub(200);
    main.push_str(&table(
        Msg::Racks.text(lang),
        &[
            Msg::Rack.text(lang),
            Msg::Site.text(lang),
            Msg::ItDraw.text(lang),
            Msg::Cap.text(lang),
            "",
            Msg::Nodes.text(lang),
        ],
        &rows,
        lang,
    ));
    if more > 0 {
        let _ = write!(
            main,
            "<p class=\"note\">+ {} {}</p>",
            int(more as u64),
            Msg::Racks.text(lang)
        );
    }

    // Accelerators by model and node state, over all sites.
    #[derive(Default)]
    struct M {
        nodes: [u64; 3],
        total: f64,
        allocated: f64,
        usable: f64,
    }
    let mut by: BTreeMap<String, M> = BTreeMap::new();
    for m in sites
        .iter()
        .flat_map(|x| x["models"].as_array().into_iter().flatten())
    {
        let e = by
            .entry(m["model"].as_str().unwrap_or("—").to_string())
            .or_default();
        for (i, k) in ["nodes_up", "nodes_draining", "nodes_down"]
            .iter()
            .enumerate()
        {
            e.nodes[i] += m[*k].as_u64().unwrap_or(0);
        }
        e.total += f(&m["accelerators"]);
        e.allocated += f(&m["accelerators_allocated"]);
        e.usable += f(&m["accelerators_free_up"]);
    }
    let mut rows = String::new();
    for (model, m) in &by {
        let _ = write!(
            rows,
            "<tr><th scope=\"row\">{}</th><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(model),
            int(m.nodes[0]),
            int(m.nodes[1]),
            int(m.nodes[2]),
            accel(m.total),
            accel(m.allocated),
            accel(m.usable.max(0.0)),
        );
    }
    main.push_str(&table(
        Msg::AcceleratorsByModel.text(lang),
        &[
            Msg::Model.text(lang),
            Msg::NodesUp.text(lang),
            Msg::NodesDraining.text(lang),
            Msg::NodesDown.text(lang),
            Msg::Total.text(lang),
            Msg::Allocated.text(lang),
            Msg::Free.text(lang),
        ],
        &rows,
        lang,
    ));
    Ok(Rendered {
        title: Msg::Highway.text(lang).into(),
        main,
        live: true,
    })
}

// ---- queue ---------------------------------------------------------------------------------

async fn queue(
    cs: &Console,
    s: &Session,
    q: &BTreeMap<String, String>,
) -> Result<Rendered, Failure> {
    let lang = s.lang;
    let page = page_number(q, "page")?;
    let offset = (page - 1) * PAGE_ROWS;
    let v = cs
        .get_json(s, &format!("/v1/queue?offset={offset}&limit={PAGE_ROWS}"))
        .await?;
    let total = v["total"].as_u64().unwrap_or(0);
    let mut rows = String::new();
    for j in v["jobs"].as_array().into_iter().flatten() {
        let est = j["estimated_start_s"]
            .as_u64()
            .map_or("—".to_string(), |t| time_ms(lang, t * 1000));
        let _ = write!(
            rows,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            int(j["position"].as_u64().unwrap_or(0) + 1),
            job_link(j["id"].as_u64().unwrap_or(0)),
            esc(st(&j["tenant"])),
            esc(st(&j["name"])),
            accel(f(&j["accelerators"])),
            esc(&time_ms(lang, j["submitted_at_ms"].as_u64().unwrap_or(0))),
            esc(st(&j["text"])),
            esc(&est),
        );
    }
    let pages = (total as usize).div_ceil(PAGE_ROWS).max(1);
    let mut main = format!(
        "<h1>{}</h1><p>{} {}</p>",
        Msg::Queue.text(lang),
        int(total),
        Msg::PendingTotal.text(lang)
    );
    main.push_str(&table(
        Msg::Queue.text(lang),
        &[
            Msg::Position.text(lang),
            Msg::Id.text(lang),
            Msg::Tenant.text(lang),
            Msg::Name.text(lang),
            Msg::Accelerators.text(lang),
            Msg::Submitted.text(lang),
            Msg::WhyWaiting.text(lang),
            Msg::EstimatedStart.text(lang),
        ],
        &rows,
        lang,
    ));
    main.push_str(&pager(
        lang,
        &[
            (Msg::First, (page > 1).then(|| "/queue".to_string())),
            (
                Msg::Previous,
                (page > 1).then(|| format!("/queue?page={}", page - 1)),
            ),
            (
                Msg::Next,
                (page < pages).then(|| format!("/queue?page={}", page + 1)),
            ),
        ],
        &format!(
            "{} {} / {}",
            Msg::Page.text(lang),
            int(page as u64),
            int(pages as u64)
        ),
    ));
    Ok(Rendered {
        title: Msg::Queue.text(lang).into(),
        main,
        live: true,
    })
}

// ---- jobs ----------------------------------------------------------------------------------

const STATES: &[&str] = &[
    "pending",
    "held",
    "running",
    "succeeded",
    "failed",
    "timed_out",
    "cancelled",
];

async fn jobs(
    cs: &Console,
    s: &Session,
    q: &BTreeMap<String, String>,
) -> Result<Rendered, Failure> {
    let lang = s.lang;
    let state = q.get("state").filter(|x| !x.is_empty());
    let mut uri = format!("/v1/jobs?limit={PAGE_ROWS}");
    if let Some(st) = state {
        let _ = write!(uri, "&state={}", url_part(st));
    }
    if let Some(c) = q.get("cursor") {
        let _ = write!(uri, "&cursor={}", url_part(c));
    }
    let v = cs.get_json(s, &uri).await?;
    let mut rows = String::new();
    for j in v["jobs"].as_array().into_iter().flatten() {
        let ended = j["ended_at_ms"]
            .as_u64()
            .map_or(String::new(), |t| time_ms(lang, t));
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            job_link(j["id"].as_u64().unwrap_or(0)),
            esc(st(&j["tenant"])),
            esc(st(&j["name"])),
            state_name(lang, st(&j["state"])),
            accel(f(&j["accelerators"])),
            esc(&time_ms(lang, j["submitted_at_ms"].as_u64().unwrap_or(0))),
            esc(&ended),
        );
    }
    let mut main = format!("<h1>{}</h1>", Msg::Jobs.text(lang));
    let _ = write!(
        main,
        "<form method=\"get\" action=\"/jobs\" class=\"inline\"><label for=\"state\">{}</label><select id=\"state\" name=\"state\"><option value=\"\">{}</option>",
        Msg::State.text(lang),
        Msg::AnyState.text(lang)
    );
    for x in STATES {
        let _ = write!(
            main,
            "<option value=\"{x}\"{}>{}</option>",
            if state.map(String::as_str) == Some(*x) {
                " selected"
            } else {
                ""
            },
            esc(&strip_tags(&state_name(lang, x)))
        );
    }
    let _ = write!(
        main,
        "</select><button type=\"submit\">{}</button></form>",
        Msg::Filter.text(lang)
    );
    main.push_str(&table(
        Msg::Jobs.text(lang),
        &[
            Msg::Id.text(lang),
            Msg::Tenant.text(lang),
            Msg::Name.text(lang),
            Msg::State.text(lang),
            Msg::Accelerators.text(lang),
            Msg::Submitted.text(lang),
            Msg::Ended.text(lang),
        ],
        &rows,
        lang,
    ));
    let state_q = state.map_or(String::new(), |x| format!("state={}&", url_part(x)));
    let first = q
        .contains_key("cursor")
        .then(|| format!("/jobs?{}", state_q.trim_end_matches('&')));
    let next = v["next_cursor"]
        .as_str()
        .map(|c| format!("/jobs?{state_q}cursor={}", url_part(c)));
    main.push_str(&pager(lang, &[(Msg::Newest, first), (Msg::Next, next)], ""));
    Ok(Rendered {
        title: Msg::Jobs.text(lang).into(),
        main,
        live: true,
    })
}

fn strip_tags(html: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for c in html.chars() {
        match c {
            '<' => inside = true,
            '>' => inside = false,
            c if !inside => out.push(c),
            _ => {}
        }
    }
    out.replace("&amp;", "&")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
}

/// The last bytes of a task's output the page shows.
const LOG_TAIL_BYTES: u64 = 64 * 1024;

async fn job(
    cs: &Console,
    s: &Session,
    id: &str,
    q: &BTreeMap<String, String>,
) -> Result<Rendered, Failure> {
    let lang = s.lang;
    let v = cs
        .get_json(s, &format!("/v1/jobs/{}", url_part(id)))
        .await?;
    let id = v["id"].as_u64().unwrap_or(0);
    let state = st(&v["state"]).to_string();
    let name = st(&v["name"]);
    let mut main = format!(
        "<h1>{} {id}{}</h1><p class=\"job-state\">{} · {} {} · {} {}</p>",
        Msg::Job.text(lang),
        if name.is_empty() {
            String::new()
        } else {
            format!(" <small>{}</small>", esc(name))
        },
        state_name(lang, &state),
        Msg::Tenant.text(lang),
        esc(st(&v["tenant"])),
        Msg::Attempt.text(lang),
        v["attempt"].as_u64().unwrap_or(0),
    );
    let started_ms = v["events"]
        .as_array()
        .and_then(|e| e.iter().rev().find(|e| e["event"] == "started"))
        .and_then(|e| e["at_ms"].as_u64());
    if let (Some(a), Some(b)) = (started_ms, v["ended_at_ms"].as_u64()) {
        let _ = write!(
            main,
            "<p>{} {}</p>",
            Msg::RanFor.text(lang),
            esc(&text::duration_s(lang, b.saturating_sub(a) / 1000))
        );
    }
    if let Some(r) = v["reason"].as_str() {
        let _ = write!(
            main,
            "<p><strong>{}:</strong> {}</p>",
            Msg::Reason.text(lang),
            esc(r)
        );
    }
    if let Some(w) = v.get("wait").filter(|w| !w.is_null()) {
        let est = w["estimated_start_s"].as_u64().map_or(String::new(), |t| {
            format!(
                " · {} {}",
                Msg::EstimatedStart.text(lang),
                time_ms(lang, t * 1000)
            )
        });
        let pos = w["position"].as_u64().map_or(String::new(), |p| {
            format!("{} {} · ", Msg::Position.text(lang), int(p + 1))
        });
        let _ = write!(
            main,
            "<p class=\"wait\"><strong>{}:</strong> {pos}{}{}</p>",
            Msg::WhyWaiting.text(lang),
            esc(st(&w["text"])),
            esc(&est)
        );
    }
    if matches!(state.as_str(), "pending" | "held" | "running") {
        let _ = write!(
            main,
            "<form method=\"post\" action=\"/jobs/{id}/cancel\">{}<button type=\"submit\" class=\"danger\" id=\"cancel\">{}</button></form>",
            s.csrf_field(),
            Msg::Cancel.text(lang)
        );
    }

    // Placement.
    let placement = v["placement"].as_array().cloned().unwrap_or_default();
    let mut rows = String::new();
    for t in &placement {
        let devices: Vec<String> = t["devices"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| d.to_string())
            .collect();
        let milli = t["milli"].as_u64().unwrap_or(1000);
        let share = if milli < 1000 {
            format!(" × {}", dec(milli as f64 / 1000.0, 3))
        } else {
            String::new()
        };
        let _ = write!(
            rows,
            "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}{}</td></tr>",
            t["task"].as_u64().unwrap_or(0),
            t["group"].as_u64().unwrap_or(0),
            esc(st(&t["node"])),
            esc(st(&t["model"])),
            esc(&devices.join(", ")),
            esc(&share),
        );
    }
    main.push_str(&table(
        Msg::Placement.text(lang),
        &[
            Msg::Task.text(lang),
            Msg::Group.text(lang),
            Msg::Node.text(lang),
            Msg::Model.text(lang),
            Msg::Devices.text(lang),
        ],
        &rows,
        lang,
    ));

    // Logs of one task (the latest attempt), while it runs or after.
    let tasks: u64 = v["spec"]["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|g| g["replicas"].as_u64().unwrap_or(1))
        .sum();
    let task: u64 = q
        .get("task")
        .and_then(|t| t.parse().ok())
        .filter(|t| *t < tasks.max(1))
        .unwrap_or(0);
    let stream = match q.get("stream").map(String::as_str) {
        Some("stderr") => "stderr",
        _ => "stdout",
    };
    let started = v["events"]
        .as_array()
        .is_some_and(|e| e.iter().any(|e| e["event"] == "started"));
    let _ = write!(
        main,
        "<section aria-labelledby=\"logs-h\"><h2 id=\"logs-h\">{}</h2><p class=\"tabs\">",
        Msg::Logs.text(lang)
    );
    for t in 0..tasks.min(64) {
        for sname in ["stdout", "stderr"] {
            let here = t == task && sname == stream;
            let _ = write!(
                main,
                "<a href=\"/jobs/{id}?task={t}&amp;stream={sname}\"{}>{} {t} {sname}</a> ",
                if here { " aria-current=\"true\"" } else { "" },
                Msg::Task.text(lang)
            );
        }
    }
    main.push_str("</p>");
    let log = if started {
        log_tail(cs, s, id, task, stream).await
    } else {
        Ok((String::new(), 0))
    };
    match log {
        Ok((text, size)) if !text.is_empty() => {
            let note = if size > LOG_TAIL_BYTES {
                format!(
                    "<p class=\"note\">{} {} B</p>",
                    Msg::LogsTail.text(lang),
                    int(size)
                )
            } else {
                String::new()
            };
            let _ = write!(
                main,
                "{note}<pre class=\"log\" id=\"log\" tabindex=\"0\">{}</pre>",
                esc(&text)
            );
        }
        Ok(_) => {
            let _ = write!(
                main,
                "<p class=\"empty\" id=\"log\">{}</p>",
                Msg::NoLogs.text(lang)
            );
        }
        Err(m) => {
            let _ = write!(main, "<p class=\"error\" id=\"log\">{}</p>", esc(&m));
        }
    }
    main.push_str("</section>");

    // History.
    let mut rows = String::new();
    for e in v["events"].as_array().into_iter().flatten() {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&time_ms(lang, e["at_ms"].as_u64().unwrap_or(0))),
            esc(st(&e["event"])),
            esc(st(&e["detail"])),
        );
    }
    main.push_str(&table(
        Msg::History.text(lang),
        &[
            Msg::Time.text(lang),
            Msg::Event.text(lang),
            Msg::Detail.text(lang),
        ],
        &rows,
        lang,
    ));

    // Spec and command.
    let spec = serde_json::to_string_pretty(&v["spec"]).unwrap_or_default();
    let command: Vec<&str> = v["command"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    let _ = write!(
        main,
        "<h2>{}</h2><pre class=\"code\">{}</pre><h2>{}</h2><pre class=\"code\">{}</pre>",
        Msg::Command.text(lang),
        esc(&shell_words(&command)),
        Msg::Spec.text(lang),
        esc(&spec)
    );
    Ok(Rendered {
        title: format!("{} {id}", Msg::Job.text(lang)),
        main,
        live: true,
    })
}

/// A command as a shell would take it back.
fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c))
            {
                a.to_string()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last `LOG_TAIL_BYTES` of a task's output, and its whole size.
async fn log_tail(
    cs: &Console,
    s: &Session,
    id: u64,
    task: u64,
    stream: &str,
) -> Result<(String, u64), String> {
    let uri = |offset: u64| {
        format!(
            "/v1/jobs/{id}/logs?task={task}&stream={stream}&offset={offset}&limit={LOG_TAIL_BYTES}"
        )
    };
    let r = cs.call(s, axum::http::Method::GET, &uri(0), None).await;
    if !r.status.is_success() {
        return Err(r.message());
    }
    let size: u64 = r
        .headers
        .get("x-gosok-log-size")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(r.body.len() as u64);
    if size <= LOG_TAIL_BYTES {
        return Ok((String::from_utf8_lossy(&r.body).into_owned(), size));
    }
    let r = cs
        .call(
            s,
            axum::http::Method::GET,
            &uri(size - LOG_TAIL_BYTES),
            None,
        )
        .await;
    if !r.status.is_success() {
        return Err(r.message());
    }
    Ok((String::from_utf8_lossy(&r.body).into_owned(), size))
}

// ---- submit --------------------------------------------------------------------------------

/// The submit form, filled with `values` (after an error), and the error if any.
pub async fn submit_form(
    cs: &Console,
    s: &Session,
    values: &BTreeMap<String, String>,
    error: Option<&str>,
) -> String {
    let lang = s.lang;
    let val = |k: &str, default: &str| esc(values.get(k).map_or(default, String::as_str));
    let mut main = format!("<h1>{}</h1>", Msg::SubmitJob.text(lang));
    if let Some(e) = error {
        let _ = write!(
            main,
            "<p class=\"error\" role=\"alert\" id=\"submit-error\">{}</p>",
            esc(e)
        );
    }
    let _ = write!(
        main,
        "<form method=\"post\" action=\"/submit\" class=\"card form\">{}",
        s.csrf_field()
    );
    if s.tenant.is_none() {
        let tenants = cs.get_json(s, "/v1/tenants").await.unwrap_or(Value::Null);
        let _ = write!(
            main,
            "<label for=\"tenant\">{}</label><select id=\"tenant\" name=\"tenant\" required>",
            Msg::ForTenant.text(lang)
        );
        for t in tenants["tenants"].as_array().into_iter().flatten() {
            let n = st(&t["name"]);
            let _ = write!(
                main,
                "<option{}>{}</option>",
                if values.get("tenant").map(String::as_str) == Some(n) {
                    " selected"
                } else {
                    ""
                },
                esc(n)
            );
        }
        main.push_str("</select>");
    }
    let catalog = cs.get_json(s, "/v1/catalog").await.unwrap_or(Value::Null);
    let _ = write!(
        main,
        "<label for=\"name\">{}</label><input id=\"name\" name=\"name\" maxlength=\"200\" value=\"{}\">\
         <label for=\"command\">{}</label><textarea id=\"command\" name=\"command\" rows=\"3\" required>{}</textarea>\
         <div class=\"row\"><div><label for=\"replicas\">{}</label><input id=\"replicas\" name=\"replicas\" type=\"number\" min=\"1\" step=\"1\" value=\"{}\"></div>\
         <div><label for=\"accelerators\">{}</label><input id=\"accelerators\" name=\"accelerators\" inputmode=\"decimal\" value=\"{}\"></div></div>\
         <label for=\"model\">{}</label><select id=\"model\" name=\"model\"><option value=\"\">{}</option>",
        Msg::Name.text(lang),
        val("name", ""),
        Msg::CommandLine.text(lang),
        val("command", ""),
        Msg::Replicas.text(lang),
        val("replicas", "1"),
        Msg::AcceleratorsPerReplica.text(lang),
        val("accelerators", "1"),
        Msg::Model.text(lang),
        Msg::AnyModel.text(lang),
    );
    for m in catalog["models"].as_array().into_iter().flatten() {
        let n = st(&m["name"]);
        let _ = write!(
            main,
            "<option{}>{}</option>",
            if values.get("model").map(String::as_str) == Some(n) {
                " selected"
            } else {
                ""
            },
            esc(n)
        );
    }
    let _ = write!(
        main,
        "</select><label for=\"runtime_limit_min\">{}</label><input id=\"runtime_limit_min\" name=\"runtime_limit_min\" type=\"number\" min=\"1\" step=\"1\" value=\"{}\">\
         <label for=\"priority\">{}</label><select id=\"priority\" name=\"priority\"><option value=\"\">{}</option>",
        Msg::RuntimeLimitMin.text(lang),
        val("runtime_limit_min", ""),
        Msg::Priority.text(lang),
        Msg::TenantDefault.text(lang),
    );
    for p in ["low", "normal", "high", "critical"] {
        let _ = write!(
            main,
            "<option{}>{p}</option>",
            if values.get("priority").map(String::as_str) == Some(p) {
                " selected"
            } else {
                ""
            }
        );
    }
    // A fresh form is preemptible (the API's default); after an error, as it was sent.
    let preemptible = values.is_empty() || values.contains_key("preemptible");
    let _ = write!(
        main,
        "</select><p class=\"check\"><input id=\"preemptible\" name=\"preemptible\" type=\"checkbox\" value=\"on\"{}><label for=\"preemptible\">{}</label></p>\
         <button type=\"submit\" id=\"submit\">{}</button></form>",
        if preemptible { " checked" } else { "" },
        Msg::Preemptible.text(lang),
        Msg::SubmitJob.text(lang),
    );
    main
}

// ---- tenants -------------------------------------------------------------------------------

async fn tenants(cs: &Console, s: &Session) -> Result<Rendered, Failure> {
    let lang = s.lang;
    let v = cs.get_json(s, "/v1/tenants").await?;
    let allocations = cs.get_json(s, "/v1/allocations").await?;
    let mut rows = String::new();
    for t in v["tenants"].as_array().into_iter().flatten() {
        let quotas: Vec<String> = t["quota_use"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|q| {
                format!(
                    "{}: {} / {} / {}",
                    st(&q["accelerator"]),
                    accel(f(&q["used"])),
                    accel(f(&q["guaranteed"])),
                    accel(f(&q["limit"]))
                )
            })
            .collect();
        let cap = t["share_cap"].as_f64();
        let share = f(&t["share"]);
        let share_cell = match cap {
            Some(c) => format!(
                "{} % {}",
                dec(share * 100.0, 1),
                charts::bar(
                    share,
                    c,
                    &format!(
                        "{} {} % / {} {} %",
                        Msg::ShareNow.text(lang),
                        dec(share * 100.0, 1),
                        Msg::ShareCap.text(lang),
                        dec(c * 100.0, 1)
                    )
                )
            ),
            None => format!("{} %", dec(share * 100.0, 1)),
        };
        let _ = write!(
            rows,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(st(&t["name"])),
            esc(st(&t["tier"])),
            dec(f(&t["weight"]), 2),
            cap.map_or("—".into(), |c| format!("{} %", dec(c * 100.0, 1))),
            share_cell,
            accel(f(&t["running_accelerators"])),
            esc(&quotas.join("; ")),
            t["balance_accelerator_hours"]
                .as_f64()
                .map_or("—".into(), |b| dec(b, 1)),
            int(t["pending"].as_u64().unwrap_or(0)),
        );
    }
    let mut main = format!("<h1>{}</h1>", Msg::Tenants.text(lang));
    main.push_str(&table(
        Msg::Tenants.text(lang),
        &[
            Msg::Tenant.text(lang),
            Msg::Tier.text(lang),
            Msg::Weight.text(lang),
            Msg::ShareCap.text(lang),
            Msg::ShareNow.text(lang),
            Msg::Running.text(lang),
            Msg::Quotas.text(lang),
            Msg::Balance.text(lang),
            Msg::Pending.text(lang),
        ],
        &rows,
        lang,
    ));
    // Operators also see the fairness report: share received against entitlement.
    if s.admin {
        let fr = cs.get_json(s, "/v1/reports/fairness").await?;
        let mut rows = String::new();
        for t in fr["tenants"].as_array().into_iter().flatten() {
            let (rec, ent) = (f(&t["share_received"]), f(&t["entitlement"]));
            let _ = write!(
                rows,
                "<tr><th scope=\"row\">{}</th><td class=\"num\">{}</td><td class=\"num\">{} %</td><td class=\"num\">{} %</td><td>{}</td></tr>",
                esc(st(&t["tenant"])),
                dec(f(&t["accelerator_hours"]), 1),
                dec(rec * 100.0, 1),
                dec(ent * 100.0, 1),
                charts::bar(
                    rec,
                    ent.max(1e-9),
                    &format!(
                        "{} {} % / {} {} %",
                        Msg::Received.text(lang),
                        dec(rec * 100.0, 1),
                        Msg::Entitlement.text(lang),
                        dec(ent * 100.0, 1)
                    )
                ),
            );
        }
        main.push_str(&table(
            Msg::Fairness.text(lang),
            &[
                Msg::Tenant.text(lang),
                "h",
                Msg::Received.text(lang),
                Msg::Entitlement.text(lang),
                "",
            ],
            &rows,
            lang,
        ));
    }
    let mut rows = String::new();
    let all: Vec<&Value> = allocations["allocations"]
        .as_array()
        .into_iter()
        .flatten()
        .collect();
    for a in all.iter().take(200) {
        let _ = write!(
            rows,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{} – {}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            esc(st(&a["tenant"])),
            esc(st(&a["programme"])),
            esc(a["model"].as_str().or(a["class"].as_str()).unwrap_or("—")),
            esc(&st(&a["from"]).chars().take(10).collect::<String>()),
            esc(&st(&a["to"]).chars().take(10).collect::<String>()),
            dec(f(&a["granted_accelerator_hours"]), 1),
            dec(f(&a["balance_accelerator_hours"]), 1),
        );
    }
    main.push_str(&table(
        Msg::Allocations.text(lang),
        &[
            Msg::Tenant.text(lang),
            Msg::Programme.text(lang),
            Msg::Model.text(lang),
            Msg::Period.text(lang),
            Msg::Granted.text(lang),
            Msg::Remaining.text(lang),
        ],
        &rows,
        lang,
    ));
    Ok(Rendered {
        title: Msg::Tenants.text(lang).into(),
        main,
        live: true,
    })
}

// ---- nodes ---------------------------------------------------------------------------------

async fn nodes(
    cs: &Console,
    s: &Session,
    q: &BTreeMap<String, String>,
) -> Result<Rendered, Failure> {
    let lang = s.lang;
    let page = page_number(q, "page")?;
    let state = q.get("state").filter(|x| !x.is_empty());
    let mut uri = format!(
        "/v1/nodes?offset={}&limit={PAGE_ROWS}",
        (page - 1) * PAGE_ROWS
    );
    if let Some(x) = state {
        let _ = write!(uri, "&state={}", url_part(x));
    }
    let v = cs.get_json(s, &uri).await?;
    let shown: Vec<&Value> = v["nodes"].as_array().into_iter().flatten().collect();
    let total = v["total"].as_u64().unwrap_or(0) as usize;
    let pages = total.div_ceil(PAGE_ROWS).max(1);
    let here = {
        let mut h = format!("/nodes?page={page}");
        if let Some(x) = state {
            let _ = write!(h, "&state={}", url_part(x));
        }
        h
    };
    let mut rows = String::new();
    for n in &shown {
        let name = st(&n["name"]);
        let agent = if s.admin {
            let a = &n["agent"];
            let cell = if a.is_null() {
                "—".to_string()
            } else {
                format!("{} ({})", st(&a["agent"]), a["epoch"].as_u64().unwrap_or(0))
            };
            format!("<td>{}</td>", esc(&cell))
        } else {
            String::new()
        };
        let action = if s.admin {
            let (verb, label) = if n["state"] == "draining" {
                ("undrain", Msg::Undrain)
            } else {
                ("drain", Msg::Drain)
            };
            format!(
                "<td><form method=\"post\" action=\"/nodes/{}/{verb}\">{}<input type=\"hidden\" name=\"next\" value=\"{}\"><button type=\"submit\" aria-label=\"{} {}\">{}</button></form></td>",
                esc(&url_part(name)),
                s.csrf_field(),
                esc(&here),
                label.text(lang),
                esc(name),
                label.text(lang)
            )
        } else {
            String::new()
        };
        let _ = write!(
            rows,
            "<tr><th scope=\"row\">{}</th><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{} / {}</td><td class=\"num\">{}</td>{agent}{action}</tr>",
            esc(name),
            esc(st(&n["site"])),
            esc(st(&n["rack"])),
            esc(n["model"].as_str().unwrap_or("—")),
            state_name(lang, st(&n["state"])),
            accel(f(&n["accelerators_allocated"])),
            accel(f(&n["accelerators"])),
            int(n["tasks"].as_u64().unwrap_or(0)),
        );
    }
    let mut heads = vec![
        Msg::Node.text(lang),
        Msg::Site.text(lang),
        Msg::Rack.text(lang),
        Msg::Model.text(lang),
        Msg::State.text(lang),
        Msg::Accelerators.text(lang),
        Msg::Tasks.text(lang),
    ];
    if s.admin {
        heads.push(Msg::Agent.text(lang));
        heads.push(Msg::Actions.text(lang));
    }
    let mut main = format!("<h1>{}</h1>", Msg::Nodes.text(lang));
    let _ = write!(
        main,
        "<form method=\"get\" action=\"/nodes\" class=\"inline\"><label for=\"state\">{}</label><select id=\"state\" name=\"state\"><option value=\"\">{}</option>",
        Msg::State.text(lang),
        Msg::AnyState.text(lang)
    );
    for x in ["up", "draining", "down"] {
        let _ = write!(
            main,
            "<option value=\"{x}\"{}>{}</option>",
            if state.map(String::as_str) == Some(x) {
                " selected"
            } else {
                ""
            },
            esc(&strip_tags(&state_name(lang, x)))
        );
    }
    let _ = write!(
        main,
        "</select><button type=\"submit\">{}</button></form>",
        Msg::Filter.text(lang)
    );
    main.push_str(&table(Msg::Nodes.text(lang), &heads, &rows, lang));
    let link = |p: usize| {
        let mut h = format!("/nodes?page={p}");
        if let Some(x) = state {
            let _ = write!(h, "&state={}", url_part(x));
        }
        h
    };
    main.push_str(&pager(
        lang,
        &[
            (Msg::First, (page > 1).then(|| link(1))),
            (Msg::Previous, (page > 1).then(|| link(page - 1))),
            (Msg::Next, (page < pages).then(|| link(page + 1))),
        ],
        &format!(
            "{} {} / {} · {} {}",
            Msg::Page.text(lang),
            int(page as u64),
            int(pages as u64),
            int(total as u64),
            Msg::Nodes.text(lang)
        ),
    ));
    Ok(Rendered {
        title: Msg::Nodes.text(lang).into(),
        main,
        live: true,
    })
}

// ---- audit ---------------------------------------------------------------------------------

async fn audit(
    cs: &Console,
    s: &Session,
    q: &BTreeMap<String, String>,
) -> Result<Rendered, Failure> {
    let lang = s.lang;
    let num = |k: &str| -> Result<Option<u64>, Failure> {
        q.get(k)
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    Failure::new(
                        StatusCode::BAD_REQUEST,
                        format!("{k}: {v:?} is not a sequence number"),
                    )
                })
            })
            .transpose()
    };
    let (before, after) = (num("before")?, num("after")?);
    let events = match after {
        // Forward from a sequence number.
        Some(a) => {
            let v = cs
                .get_json(s, &format!("/v1/events?after={a}&limit={PAGE_ROWS}"))
                .await?;
            v["events"].as_array().cloned().unwrap_or_default()
        }
        // The newest page (before the end of the log, or before a sequence number).
        None => newest_events(cs, s, before).await?,
    };
    let mut rows = String::new();
    for e in &events {
        let entry = &e["entry"];
        let by = entry["by"].as_str().unwrap_or("");
        let mut detail = entry.clone();
        if let Some(m) = detail.as_object_mut() {
            m.remove("by");
        }
        let mut d = detail.to_string();
        if d.len() > 300 {
            let cut = (0..=300)
                .rev()
                .find(|&i| d.is_char_boundary(i))
                .unwrap_or(0);
            d.truncate(cut);
            d.push('…');
        }
        let _ = write!(
            rows,
            "<tr><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}</code></td></tr>",
            int(e["seq"].as_u64().unwrap_or(0)),
            esc(&time_ms(lang, e["at_ms"].as_u64().unwrap_or(0))),
            esc(st(&e["kind"])),
            esc(by),
            esc(&d),
        );
    }
    let mut main = format!("<h1>{}</h1>", Msg::Audit.text(lang));
    main.push_str(&table(
        Msg::Audit.text(lang),
        &[
            Msg::Seq.text(lang),
            Msg::Time.text(lang),
            Msg::Kind.text(lang),
            Msg::By.text(lang),
            Msg::Detail.text(lang),
        ],
        &rows,
        lang,
    ));
    let first = events.first().and_then(|e| e["seq"].as_u64());
    let last = events.last().and_then(|e| e["seq"].as_u64());
    let older = first
        .filter(|&f| f > 1)
        .map(|f| format!("/audit?before={f}"));
    let newer = last
        .filter(|_| before.is_some() || after.is_some())
        .map(|l| format!("/audit?after={l}"));
    main.push_str(&pager(
        lang,
        &[
            (
                Msg::Newest,
                (before.is_some() || after.is_some()).then(|| "/audit".to_string()),
            ),
            (Msg::Older, older),
            (Msg::Newer, newer),
        ],
        "",
    ));
    Ok(Rendered {
        title: Msg::Audit.text(lang).into(),
        main,
        live: after.is_none() && before.is_none(),
    })
}

/// The last `PAGE_ROWS` audit records before `before` (the end of the log if None). The
/// API pages forward and skips ticks, so this looks back over a window that doubles until it
/// holds a page (or reaches the start), then reads the window forward.
async fn newest_events(
    cs: &Console,
    s: &Session,
    before: Option<u64>,
) -> Result<Vec<Value>, Failure> {
    let end = match before {
        Some(b) => b.saturating_sub(1),
        None => cs.app.core().seq(),
    };
    let mut window = (PAGE_ROWS as u64) * 2;
    loop {
        let from = end.saturating_sub(window);
        let mut got: Vec<Value> = Vec::new();
        let mut after = from;
        loop {
            let v = cs
                .get_json(s, &format!("/v1/events?after={after}&limit=1000"))
                .await?;
            let page = v["events"].as_array().cloned().unwrap_or_default();
            let n = page.len();
            got.extend(
                page.into_iter()
                    .filter(|e| e["seq"].as_u64().is_some_and(|q| q <= end)),
            );
            match v["next_after"].as_u64() {
                Some(next) if n == 1000 && next < end => after = next,
                _ => break,
            }
        }
        if got.len() >= PAGE_ROWS || from == 0 {
            let skip = got.len().saturating_sub(PAGE_ROWS);
            return Ok(got.split_off(skip));
        }
        window = window.saturating_mul(4);
    }
}
