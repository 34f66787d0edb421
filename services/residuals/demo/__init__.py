"""``residuals demo``: the whole product on the local stack, one command, a month in minutes."""
