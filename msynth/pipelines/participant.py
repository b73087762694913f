"""Placeholder replaced below."""
def init_participant_wf(**kwargs):
    raise NotImplementedError
