"""``residuals demo``: the whole product on the local stack, one command, a month in minutes."""

#: Environment variable every demo subprocess carries (the run id): how the demo, its
#: tests and a curious user find the processes of one run.
RUN_MARKER = "RESIDUALS_DEMO_RUN"
