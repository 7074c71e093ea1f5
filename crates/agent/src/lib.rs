//! gosok's node agent (`docs/AGENTS.md`).
