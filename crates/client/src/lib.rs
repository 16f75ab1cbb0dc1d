//! Typed client of the agent API, and the wire types the agent and its clients share.
