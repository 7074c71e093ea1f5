//! What the end-to-end tests share. Each test file uses part of it.
#![allow(dead_code)]

pub mod up;
pub mod webdriver;
