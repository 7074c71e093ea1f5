//! Leader election through PostgreSQL: one lease row with a term.
//!
//! The choice: a lease row (term, holder, URL, expiry) changed only by compare-and-set
//! `UPDATE`s, rather than advisory locks. An advisory lock belongs to a session, so a
//! leader cut from PostgreSQL would hold it until the server notices the dead connection
//! (TCP keepalive, minutes), and a frozen leader's session would keep it forever; a lease
//! expires on PostgreSQL's clock whatever happens to its holder. Expiry times are taken from
//! PostgreSQL's clock only, so the replicas' clocks do not matter; each replica measures its
//! own lease from before it asked for it on its monotonic clock, so it believes itself
//! leader no longer than PostgreSQL does.
//!
//! - Acquire: `term = term + 1` where the lease has expired. The term never goes back, so it
//!   names one leadership; every record carries the term it was written under and an append
//!   under a stale term is refused in its transaction (see [`crate::PgStore::fenced`]).
//! - Renew: extends the expiry where `term` and `holder` are still the caller's.
//! - Release (a clean stop): expires the lease at once, so a follower need not wait it out.

use crate::{PgStore, StoreError};

/// The lease row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub term: u64,
    /// The holder's replica id ("" before the first election).
    pub holder: String,
    /// The holder's advertised URL, where followers send clients.
    pub url: String,
    /// Milliseconds until it expires, on PostgreSQL's clock (negative: expired).
    pub expires_in_ms: i64,
}

impl Lease {
    pub fn live(&self) -> bool {
        self.expires_in_ms > 0 && !self.holder.is_empty()
    }
}

impl PgStore {
    /// Takes the lease for `lease_ms` if it has expired: returns the new term, or None while
    /// another replica holds it.
    pub fn acquire_lease(
        &self,
        holder: &str,
        url: &str,
        lease_ms: u64,
    ) -> Result<Option<u64>, StoreError> {
        let (holder, url, ms) = (holder.to_string(), url.to_string(), lease_ms as f64);
        self.call(move |c| {
            let row = c.query_opt(
                "UPDATE gosok_leader
                    SET term = term + 1, holder = $1, url = $2,
                        expires_at = clock_timestamp() + $3 * interval '1 millisecond'
                  WHERE id = 1 AND expires_at < clock_timestamp()
              RETURNING term",
                &[&holder, &url, &ms],
            )?;
            Ok(row
                .map(|r| r.try_get::<_, i64>(0))
                .transpose()?
                .map(|t| t as u64))
        })
    }

    /// Extends the lease by `lease_ms` from now if `holder` still holds `term`.
    pub fn renew_lease(&self, holder: &str, term: u64, lease_ms: u64) -> Result<bool, StoreError> {
        let (holder, term, ms) = (holder.to_string(), term as i64, lease_ms as f64);
        self.call(move |c| {
            let n = c.execute(
                "UPDATE gosok_leader
                    SET expires_at = clock_timestamp() + $3 * interval '1 millisecond'
                  WHERE id = 1 AND term = $1 AND holder = $2",
                &[&term, &holder, &ms],
            )?;
            Ok(n == 1)
        })
    }

    /// Gives the lease up (a clean stop): a follower takes over without waiting it out.
    pub fn release_lease(&self, holder: &str, term: u64) -> Result<(), StoreError> {
        let (holder, term) = (holder.to_string(), term as i64);
        self.call(move |c| {
            c.execute(
                "UPDATE gosok_leader SET expires_at = 'epoch'
                  WHERE id = 1 AND term = $1 AND holder = $2",
                &[&term, &holder],
            )?;
            Ok(())
        })
    }

    /// The lease as it stands.
    pub fn lease(&self) -> Result<Lease, StoreError> {
        self.call(|c| {
            let r = c.query_one(
                "SELECT term, holder, url,
                        (EXTRACT(EPOCH FROM (expires_at - clock_timestamp())) * 1000)::bigint
                   FROM gosok_leader WHERE id = 1",
                &[],
            )?;
            Ok(Lease {
                term: r.try_get::<_, i64>(0)? as u64,
                holder: r.try_get(1)?,
                url: r.try_get(2)?,
                expires_in_ms: r.try_get(3)?,
            })
        })
    }
}

/// A replica as it last reported itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaRow {
    pub id: String,
    pub url: String,
    /// "leader", "follower" or "unavailable".
    pub role: String,
    /// The last log record it has applied.
    pub applied_seq: u64,
    /// How long ago, on PostgreSQL's clock.
    pub seen_ms_ago: u64,
}

impl PgStore {
    /// Records that replica `id` is alive in `role`, having applied the log up to
    /// `applied_seq`; forgets replicas not heard from for an hour.
    pub fn heartbeat(
        &self,
        id: &str,
        url: &str,
        role: &str,
        applied_seq: u64,
    ) -> Result<(), StoreError> {
        let (id, url, role, seq) = (
            id.to_string(),
            url.to_string(),
            role.to_string(),
            applied_seq as i64,
        );
        self.call(move |c| {
            c.execute(
                "INSERT INTO gosok_replicas (id, url, role, applied_seq, seen_at)
                 VALUES ($1, $2, $3, $4, clock_timestamp())
                 ON CONFLICT (id) DO UPDATE SET url = $2, role = $3, applied_seq = $4,
                                                seen_at = clock_timestamp()",
                &[&id, &url, &role, &seq],
            )?;
            c.execute(
                "DELETE FROM gosok_replicas WHERE seen_at < clock_timestamp() - interval '1 hour'",
                &[],
            )?;
            Ok(())
        })
    }

    /// The replicas heard from in the last hour, by URL.
    pub fn replicas(&self) -> Result<Vec<ReplicaRow>, StoreError> {
        self.call(|c| {
            let rows = c.query(
                "SELECT id, url, role, applied_seq,
                        GREATEST(0, (EXTRACT(EPOCH FROM (clock_timestamp() - seen_at)) * 1000)::bigint)
                   FROM gosok_replicas ORDER BY url, id",
                &[],
            )?;
            rows.iter()
                .map(|r| {
                    Ok(ReplicaRow {
                        id: r.try_get(0)?,
                        url: r.try_get(1)?,
                        role: r.try_get(2)?,
                        applied_seq: r.try_get::<_, i64>(3)? as u64,
                        seen_ms_ago: r.try_get::<_, i64>(4)? as u64,
                    })
                })
                .collect()
        })
    }
}
