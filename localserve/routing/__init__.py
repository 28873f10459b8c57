"""Served names (routes): a name clients call, resolved to weighted installed models
("versions"), with a history, rollbacks, A/B splits and canary rollouts (issue 14)."""
