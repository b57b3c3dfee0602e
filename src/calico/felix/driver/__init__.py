"""The two-process plumbing between Felix and its dataplane driver.

* `pipe`: the framing of message batches over a pair of OS pipes, and the messages that only
  the two processes exchange (`DriverInit`, `DriverReady`, `DriverFatal`, ...);
* `connection`: Felix's end: start the driver, feed it, notice its death;
* `main`: the driver process (`python -m calico.felix.driver`): its main loop over Felix's pipe,
  netlink and timers, wiring the dataplane manager to the kernel drivers;
* `metrics`: the driver's Prometheus metrics.

Nothing here imports `calico.felix.daemon`: the daemon depends on this package, not the reverse.
"""
