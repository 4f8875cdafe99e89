//! Nothing to link: this crate holds the tests of deploy/ (see tests/).
