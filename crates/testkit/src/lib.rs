//! The Rollway test kit: a demo app, a bounded load loop, and later temporary agents and fault injection.
