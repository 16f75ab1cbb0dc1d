//! Integration tests of the process driver against real processes (`demo-app` and `/bin/sh`).

mod adopt;
mod logs;
mod process;
mod support;
