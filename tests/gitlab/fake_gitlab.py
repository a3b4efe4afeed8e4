"""The fake GitLab of these tests is Vivian's GitLab stand-in (``vivian/gitlab.py``): one copy, re-exported here
so that ``from tests.gitlab.fake_gitlab import FakeGitlab, ADMIN_TOKEN, ...`` keeps working."""

from vivian.gitlab import ADMIN_TOKEN, REG_TOKEN, USER_TOKEN, VERSION, FakeGitlab, VivianGitlab, is_vivian

__all__ = ["ADMIN_TOKEN", "REG_TOKEN", "USER_TOKEN", "VERSION", "FakeGitlab", "VivianGitlab", "is_vivian"]
