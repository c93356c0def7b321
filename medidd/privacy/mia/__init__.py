"""Membership-inference attacks: pure scoring maths (:mod:`.scores`) and per-image losses
(:mod:`.losses`)."""
