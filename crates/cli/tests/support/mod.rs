//! What the end-to-end tests share. Each test file uses part of it.
#![allow(dead_code)]

pub mod philly;
pub mod up;
pub mod webdriver;
