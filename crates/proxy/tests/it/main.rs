//! Integration tests of the proxy: real sockets on 127.0.0.1, real demo-app processes.
