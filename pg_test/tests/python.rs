//! The Python package (`python/`, issue 10): its pytest suite runs against
//! a cluster this test starts. `make test` installs the package into the
//! test virtualenv first (`pip install ./python`, as the README says).

use pg_test::e2e::cli;
use pg_test::Cluster;
use std::path::Path;
use std::process::Command;

#[test]
fn the_python_package_passes_its_pytest_suite() {
    let cluster = Cluster::start();
    cluster.connect().batch_execute("CREATE ROLE alice LOGIN PASSWORD 'secret'").unwrap();
    cluster.require_password("alice");
    let python = std::env::var("PGCDC_PYTHON").unwrap_or_else(|_| "python3".into());
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python/tests");
    let status = Command::new(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider"])
        .arg(&tests)
        .env("PGCDC_TEST_HOST", cluster.socket_dir())
        .env("PGCDC_TEST_PORT", pg_test::PORT.to_string())
        .env("PGCDC_TEST_BINDIR", pg_test::bindir())
        .env("PGCDC_TEST_CLI", cli())
        .env("PGCDC_TEST_FLIGHT_USER", "alice")
        .env("PGCDC_TEST_FLIGHT_PASSWORD", "secret")
        .status()
        .unwrap_or_else(|e| panic!("run {python} -m pytest (is the test virtualenv made? `make test` makes it): {e}"));
    assert!(status.success(), "the pytest suite failed (its report is above); server log:\n{}", cluster.log());
}
