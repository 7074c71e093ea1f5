//! The console's words in English and Korean, and numbers, dates and durations as each
//! language writes them. Every message is declared with both texts at once, so a page cannot
//! show a message that lacks one.

/// The page language, from the `gosok_lang` cookie or the browser's Accept-Language.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Ko,
}

impl Lang {
    pub fn code(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Ko => "ko",
        }
    }

    pub fn parse(s: &str) -> Option<Lang> {
        match s {
            "en" => Some(Lang::En),
            "ko" => Some(Lang::Ko),
            _ => None,
        }
    }

    /// The first of Korean or English in an Accept-Language header (English otherwise).
    pub fn from_accept(header: &str) -> Lang {
        for part in header.split(',') {
            let tag = part
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            if tag.starts_with("ko") {
                return Lang::Ko;
            }
            if tag.starts_with("en") {
                return Lang::En;
            }
        }
        Lang::En
    }

    pub fn other(self) -> Lang {
        match self {
            Lang::En => Lang::Ko,
            Lang::Ko => Lang::En,
        }
    }

    /// The language's own name, for the switch.
    pub fn own_name(self) -> &'static str {
        match self {
            Lang::En => "English",
            Lang::Ko => "한국어",
        }
    }
}

macro_rules! messages {
    ($($id:ident => $en:literal, $ko:literal;)*) => {
        /// A message of the console.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Msg { $($id),* }

        impl Msg {
            pub fn text(self, lang: Lang) -> &'static str {
                match (self, lang) {
                    $((Msg::$id, Lang::En) => $en, (Msg::$id, Lang::Ko) => $ko,)*
                }
            }
        }
    };
}

messages! {
    Console => "gosok console", "gosok 콘솔";
    SkipToContent => "Skip to content", "본문으로 건너뛰기";
    MainNav => "Main", "주 메뉴";
    Highway => "Highway", "고속도로";
    Queue => "Queue", "대기열";
    Jobs => "Jobs", "작업";
    Job => "Job", "작업";
    Submit => "Submit", "제출";
    Tenants => "Tenants", "테넌트";
    Nodes => "Nodes", "노드";
    Audit => "Audit log", "감사 로그";
    SignIn => "Sign in", "로그인";
    SignOut => "Sign out", "로그아웃";
    Token => "Token", "토큰";
    TokenHelp => "An operator (admin) or tenant token, as `gosok up` prints it or `gosok token create` makes it. It is kept in a cookie this browser sends only to this controller.",
        "`gosok up`이 출력하거나 `gosok token create`로 만든 운영자(관리자) 또는 테넌트 토큰입니다. 이 브라우저가 이 컨트롤러에만 보내는 쿠키에 보관됩니다.";
    SignedInAs => "Signed in as", "로그인:";
    Operator => "operator", "운영자";
    Tenant => "Tenant", "테넌트";
    SitesMap => "Sites on the map, sized by power budget, filled by draw", "지도 위의 사이트 (크기: 전력 예산, 채움: 사용 전력)";
    OtherRegions => "Other regions", "기타 지역";
    Site => "Site", "사이트";
    PowerDraw => "Facility draw", "시설 전력";
    Budget => "Budget", "예산";
    ItDraw => "IT draw", "IT 전력";
    Pue => "PUE", "PUE";
    Racks => "Racks", "랙";
    Rack => "Rack", "랙";
    Cap => "Cap", "상한";
    Accelerators => "Accelerators", "가속기";
    AcceleratorsByModel => "Accelerators by model and state", "모델·상태별 가속기";
    Model => "Model", "모델";
    Allocated => "Allocated", "할당";
    Free => "Free", "여유";
    Total => "Total", "전체";
    State => "State", "상태";
    NodesUp => "Nodes up", "가동 노드";
    NodesDraining => "Draining", "드레인 중";
    NodesDown => "Down", "중단";
    SetBudget => "Set budget", "예산 변경";
    NewBudgetMw => "New budget (MW)", "새 예산 (MW)";
    Position => "Position", "순서";
    Id => "ID", "ID";
    Name => "Name", "이름";
    Submitted => "Submitted", "제출 시각";
    Ended => "Ended", "종료 시각";
    WhyWaiting => "Why it waits", "대기 사유";
    EstimatedStart => "Estimated start", "예상 시작";
    PendingTotal => "pending jobs", "대기 작업";
    Nothing => "Nothing here.", "항목이 없습니다.";
    Previous => "Previous", "이전";
    Next => "Next", "다음";
    First => "First", "처음";
    Newest => "Newest", "최신";
    Older => "Older", "이전 기록";
    Newer => "Newer", "최근 기록";
    Page => "Page", "페이지";
    Pagination => "Pagination", "페이지 이동";
    AnyState => "any state", "모든 상태";
    Filter => "Filter", "필터";
    Spec => "Spec", "명세";
    Command => "Command", "명령";
    Placement => "Placement", "배치";
    Task => "Task", "태스크";
    Group => "Group", "그룹";
    Node => "Node", "노드";
    Devices => "Devices", "장치";
    History => "History", "이력";
    Time => "Time", "시각";
    Event => "Event", "이벤트";
    Logs => "Logs", "로그";
    NoLogs => "No output yet.", "아직 출력이 없습니다.";
    LogsTail => "the last 64 KiB of", "마지막 64 KiB /";
    Cancel => "Cancel job", "작업 취소";
    Reason => "Reason", "사유";
    Attempt => "Attempt", "시도";
    RanFor => "ran for", "실행 시간";
    Replicas => "Replicas", "복제 수";
    AcceleratorsPerReplica => "Accelerators per replica (whole, or a fraction such as 0.5 of a shareable one)",
        "복제당 가속기 (정수, 또는 공유 가능 모델의 0.5 같은 분수)";
    AnyModel => "any model", "모든 모델";
    CommandLine => "Command (run with sh -c)", "명령 (sh -c로 실행)";
    RuntimeLimitMin => "Runtime limit (minutes, optional)", "실행 시간 제한 (분, 선택)";
    Priority => "Priority", "우선순위";
    TenantDefault => "the tenant's default", "테넌트 기본값";
    Preemptible => "Preemptible (may be stopped and requeued for higher priority work)",
        "선점 가능 (더 높은 우선순위 작업을 위해 중단 후 재대기될 수 있음)";
    SubmitJob => "Submit job", "작업 제출";
    ForTenant => "For tenant", "대상 테넌트";
    Tier => "Tier", "등급";
    Weight => "Weight", "가중치";
    ShareCap => "Share cap", "점유 상한";
    ShareNow => "Share now", "현재 점유";
    Running => "Running accelerators", "실행 중 가속기";
    Quotas => "Quotas (used / guaranteed / limit)", "할당량 (사용 / 보장 / 한도)";
    Balance => "Balance (accelerator-hours)", "잔액 (가속기-시간)";
    Pending => "Pending", "대기";
    Fairness => "Share received against entitlement (last 30 days)", "자격 대비 받은 점유 (최근 30일)";
    Received => "Received", "받은 점유";
    Entitlement => "Entitlement", "자격";
    Allocations => "Allocations", "배정";
    Programme => "Programme", "프로그램";
    Granted => "Granted (h)", "부여 (시간)";
    Remaining => "Remaining (h)", "잔여 (시간)";
    Period => "Period", "기간";
    Agent => "Agent (epoch)", "에이전트 (에포크)";
    Tasks => "Tasks", "태스크";
    Drain => "Drain", "드레인";
    Undrain => "Undrain", "드레인 해제";
    Actions => "Actions", "작업";
    Seq => "Seq", "순번";
    Kind => "Kind", "종류";
    By => "By", "수행자";
    Detail => "Detail", "내용";
    Error => "Error", "오류";
    Forbidden => "Not allowed", "허용되지 않음";
    NotFound => "Not found", "찾을 수 없음";
    FormExpired => "This form has expired or did not come from this console: reload the page and try again.",
        "이 양식이 만료되었거나 이 콘솔에서 온 것이 아닙니다. 페이지를 새로 고친 뒤 다시 시도하세요.";
    Shed => "jobs shed to meet the new budget", "개 작업이 새 예산에 맞추어 중단됨";
    StillOver => "the site is still over its budget", "사이트가 아직 예산을 넘습니다";
    BudgetSet => "Budget set", "예산 변경됨";
    Drained => "Node marked draining", "노드를 드레인으로 표시함";
    Undrained => "Node marked up", "노드를 가동으로 표시함";
    Cancelled => "Job cancelled", "작업이 취소됨";
}

/// Groups of three digits with commas (both languages write them so).
pub fn int(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::with_capacity(s.len() + s.len() / 3);
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A decimal with `places` digits after the point, digits grouped; trailing zeros kept so
/// that columns line up.
pub fn dec(x: f64, places: usize) -> String {
    if !x.is_finite() {
        return "–".into();
    }
    let neg = x < 0.0;
    let s = format!("{:.*}", places, x.abs());
    let (whole, frac) = s.split_once('.').unwrap_or((&s, ""));
    let mut out = String::new();
    if neg && s.chars().any(|c| c.is_ascii_digit() && c != '0') {
        out.push('-');
    }
    out.push_str(&int(whole.parse().unwrap_or(0)));
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    out
}

/// Watts as MW or kW, whichever reads better.
pub fn power_w(w: f64) -> String {
    if w.abs() >= 1e6 {
        format!("{} MW", dec(w / 1e6, 2))
    } else {
        format!("{} kW", dec(w / 1e3, 1))
    }
}

/// Accelerators (thousandths allowed): "8", "0.5".
pub fn accel(x: f64) -> String {
    if (x - x.round()).abs() < 1e-9 {
        int(x.round().max(0.0) as u64)
    } else {
        dec(x, 3).trim_end_matches('0').to_string()
    }
}

/// A wall-clock time in milliseconds since the epoch: Korean dates in Korea Standard Time
/// (UTC+9, no daylight saving) as Korean writes them, English ones in UTC.
pub fn time_ms(lang: Lang, ms: u64) -> String {
    let s = ms / 1000;
    match lang {
        Lang::En => {
            let (y, m, d) = crate::dates::civil_from_days((s / 86_400) as i64);
            let sod = s % 86_400;
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            format!(
                "{d} {} {y} {:02}:{:02}:{:02} UTC",
                MONTHS[(m as usize).saturating_sub(1).min(11)],
                sod / 3600,
                sod % 3600 / 60,
                sod % 60
            )
        }
        Lang::Ko => {
            let k = s + 9 * 3600;
            let (y, m, d) = crate::dates::civil_from_days((k / 86_400) as i64);
            let sod = k % 86_400;
            let (h, min, sec) = (sod / 3600, sod % 3600 / 60, sod % 60);
            let (half, h12) = match h {
                0 => ("오전", 12),
                1..=11 => ("오전", h),
                12 => ("오후", 12),
                _ => ("오후", h - 12),
            };
            format!("{y}. {m}. {d}. {half} {h12}:{min:02}:{sec:02} KST")
        }
    }
}

/// A duration in seconds, to the minute past an hour.
pub fn duration_s(lang: Lang, s: u64) -> String {
    let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
    match lang {
        Lang::En => match (h, m) {
            (0, 0) => format!("{sec} s"),
            (0, _) => format!("{m} min {sec} s"),
            _ => format!("{} h {m} min", int(h)),
        },
        Lang::Ko => match (h, m) {
            (0, 0) => format!("{sec}초"),
            (0, _) => format!("{m}분 {sec}초"),
            _ => format!("{}시간 {m}분", int(h)),
        },
    }
}

/// Text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A path segment or query value, percent-encoded.
pub fn url_part(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_dates_and_escapes_read_as_each_language_writes_them() {
        assert_eq!(int(0), "0");
        assert_eq!(int(1234567), "1,234,567");
        assert_eq!(dec(12345.678, 2), "12,345.68");
        assert_eq!(dec(-0.001, 2), "0.00");
        assert_eq!(power_w(16_500_000.0), "16.50 MW");
        assert_eq!(power_w(40_000.0), "40.0 kW");
        assert_eq!(accel(8.0), "8");
        assert_eq!(accel(0.5), "0.5");
        // 2024-02-29T12:00:00Z is 21:00 in Seoul.
        let ms = 1_709_208_000_000;
        assert_eq!(time_ms(Lang::En, ms), "29 Feb 2024 12:00:00 UTC");
        assert_eq!(time_ms(Lang::Ko, ms), "2024. 2. 29. 오후 9:00:00 KST");
        // 16:00 UTC is past midnight in Seoul: the next day.
        assert_eq!(
            time_ms(Lang::Ko, ms + 4 * 3_600_000),
            "2024. 3. 1. 오전 1:00:00 KST"
        );
        assert_eq!(duration_s(Lang::Ko, 3725), "1시간 2분");
        assert_eq!(duration_s(Lang::En, 65), "1 min 5 s");
        assert_eq!(
            esc("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(url_part("a b/ç"), "a%20b%2F%C3%A7");
        assert_eq!(Lang::from_accept("ko-KR,ko;q=0.9,en;q=0.8"), Lang::Ko);
        assert_eq!(Lang::from_accept("fr, en-GB;q=0.5"), Lang::En);
    }
}
