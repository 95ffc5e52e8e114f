"""fftrain's errors a user can cause share one base class with recordio_tools' (see recordio_tools.errors)."""

from recordio_tools.errors import EXIT_USER_ERROR, UserError, one_line, report_user_error

__all__ = ["EXIT_USER_ERROR", "UserError", "one_line", "report_user_error"]
