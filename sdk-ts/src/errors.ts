/**
 * Errors, one tree rooted at {@link HutchError}:
 *
 *     HutchError
 *     ├── APIError                       the server answered with an error (status, code, message)
 *     │   ├── AuthenticationError        401 unauthorized
 *     │   ├── NotFoundError              404 (SandboxNotFoundError, FileNotFoundError, ...)
 *     │   ├── ConflictError              409 (SandboxNotRunningError, ProcessNotRunningError, ...)
 *     │   ├── InvalidRequestError        422 / 400 (InvalidPathError, InvalidPortError, ...)
 *     │   ├── PermissionDeniedError      403 permission_denied, git_auth_failed
 *     │   ├── PayloadTooLargeError       413 body_too_large
 *     │   ├── NoSpaceError               507 no_space
 *     │   └── ServerError                5xx (RegistryError, SandboxUnavailableError, ...)
 *     ├── CommandTimeoutError            a command ran past its timeout (.result has its output)
 *     ├── ProcessTimeoutError            a wait on a process ran out of time (it still runs)
 *     ├── ProcessExitedError             a process ended before what was waited for happened
 *     ├── ConfigurationError             a bad baseUrl / apiKey given to the SDK
 *     └── HutchConnectionError           the server could not be reached, or a stream broke
 *
 * The server puts a stable `code` in every error body; {@link ERROR_CLASSES} maps it to a class
 * (one table), and a code this SDK does not know yet falls back to the class for the status.
 */

export interface ErrorField {
  loc: (string | number)[];
  message: string;
}

export class HutchError extends Error {
  override name = "HutchError";
}

export class APIError extends HutchError {
  override name = "APIError";
  readonly status: number;
  readonly code: string;
  readonly fields: ErrorField[];

  constructor(message: string, options: { status: number; code: string; fields?: ErrorField[] }) {
    super(message);
    this.status = options.status;
    this.code = options.code;
    this.fields = options.fields ?? [];
  }
}

export class AuthenticationError extends APIError { override name = "AuthenticationError"; }
export class NotFoundError extends APIError { override name = "NotFoundError"; }
export class ConflictError extends APIError { override name = "ConflictError"; }
export class InvalidRequestError extends APIError { override name = "InvalidRequestError"; }
export class PermissionDeniedError extends APIError { override name = "PermissionDeniedError"; }
export class PayloadTooLargeError extends APIError { override name = "PayloadTooLargeError"; }
export class NoSpaceError extends APIError { override name = "NoSpaceError"; }
export class ServerError extends APIError { override name = "ServerError"; }

export class SandboxNotFoundError extends NotFoundError { override name = "SandboxNotFoundError"; }
export class ImageNotFoundError extends NotFoundError { override name = "ImageNotFoundError"; }
export class ProcessNotFoundError extends NotFoundError { override name = "ProcessNotFoundError"; }
export class SessionNotFoundError extends NotFoundError { override name = "SessionNotFoundError"; }
export class FileNotFoundError extends NotFoundError { override name = "FileNotFoundError"; }
export class ContextNotFoundError extends NotFoundError { override name = "ContextNotFoundError"; }
export class TerminalNotFoundError extends NotFoundError { override name = "TerminalNotFoundError"; }
export class PortNotExposedError extends NotFoundError { override name = "PortNotExposedError"; }
export class BucketNotMountedError extends NotFoundError { override name = "BucketNotMountedError"; }
export class KeyNotFoundError extends NotFoundError { override name = "KeyNotFoundError"; }
export class GitRepositoryNotFoundError extends NotFoundError { override name = "GitRepositoryNotFoundError"; }
export class GitBranchNotFoundError extends NotFoundError { override name = "GitBranchNotFoundError"; }
export class SnapshotNotFoundError extends NotFoundError { override name = "SnapshotNotFoundError"; }
export class BackupNotFoundError extends NotFoundError { override name = "BackupNotFoundError"; }

export class SandboxExistsError extends ConflictError { override name = "SandboxExistsError"; }
export class SandboxNotRunningError extends ConflictError { override name = "SandboxNotRunningError"; }
export class ProcessExistsError extends ConflictError { override name = "ProcessExistsError"; }
export class ProcessNotRunningError extends ConflictError { override name = "ProcessNotRunningError"; }
export class SessionExistsError extends ConflictError { override name = "SessionExistsError"; }
export class ContextDeadError extends ConflictError { override name = "ContextDeadError"; }
export class ImageInUseError extends ConflictError { override name = "ImageInUseError"; }
export class MountPathBusyError extends ConflictError { override name = "MountPathBusyError"; }
export class FileExistsError extends ConflictError { override name = "FileExistsError"; }
export class IsADirectoryError extends ConflictError { override name = "IsADirectoryError"; }
export class NotADirectoryError extends ConflictError { override name = "NotADirectoryError"; }
export class DirectoryNotEmptyError extends ConflictError { override name = "DirectoryNotEmptyError"; }
export class NotARegularFileError extends ConflictError { override name = "NotARegularFileError"; }
export class ReadOnlyError extends ConflictError { override name = "ReadOnlyError"; }
/** 409 invalid_state: an operation the sandbox's state does not allow (e.g. pause a stopped one). */
export class SandboxStateConflictError extends ConflictError { override name = "SandboxStateConflictError"; }
export class SnapshotExistsError extends ConflictError { override name = "SnapshotExistsError"; }

export class InvalidSandboxIdError extends InvalidRequestError { override name = "InvalidSandboxIdError"; }
export class InvalidPathError extends InvalidRequestError { override name = "InvalidPathError"; }
export class InvalidPortError extends InvalidRequestError { override name = "InvalidPortError"; }
export class InvalidSignalError extends InvalidRequestError { override name = "InvalidSignalError"; }
export class InvalidSizeError extends InvalidRequestError { override name = "InvalidSizeError"; }
export class UnknownLanguageError extends InvalidRequestError { override name = "UnknownLanguageError"; }
export class LanguageUnavailableError extends InvalidRequestError { override name = "LanguageUnavailableError"; }
export class InvalidGitUrlError extends InvalidRequestError { override name = "InvalidGitUrlError"; }
export class GitError extends InvalidRequestError { override name = "GitError"; }
export class ImageInvalidError extends InvalidRequestError { override name = "ImageInvalidError"; }
export class ImageBuildFailedError extends InvalidRequestError {
  override name = "ImageBuildFailedError";
  /** The build's last lines of output (from a streamed build's error). */
  outputTail: string[] = [];
}
export class BucketMountFailedError extends InvalidRequestError { override name = "BucketMountFailedError"; }
/** 400 backup_target_unreachable: the backup's bucket could not be reached; nothing was written. */
export class BackupTargetUnreachableError extends BucketMountFailedError { override name = "BackupTargetUnreachableError"; }

export class RegistryError extends ServerError { override name = "RegistryError"; }
export class SandboxUnavailableError extends ServerError { override name = "SandboxUnavailableError"; }
export class SandboxStartFailedError extends ServerError { override name = "SandboxStartFailedError"; }
export class GitUnreachableError extends ServerError { override name = "GitUnreachableError"; }
export class BackupFailedError extends ServerError { override name = "BackupFailedError"; }

type APIErrorClass = new (
  message: string,
  options: { status: number; code: string; fields?: ErrorField[] },
) => APIError;

/** The one table: the server's stable `code` -> the class raised for it. */
export const ERROR_CLASSES: Readonly<Record<string, APIErrorClass>> = {
  unauthorized: AuthenticationError,
  not_found: NotFoundError,
  sandbox_not_found: SandboxNotFoundError,
  image_not_found: ImageNotFoundError,
  process_not_found: ProcessNotFoundError,
  session_not_found: SessionNotFoundError,
  file_not_found: FileNotFoundError,
  context_not_found: ContextNotFoundError,
  terminal_not_found: TerminalNotFoundError,
  port_not_exposed: PortNotExposedError,
  bucket_not_mounted: BucketNotMountedError,
  key_not_found: KeyNotFoundError,
  git_repository_not_found: GitRepositoryNotFoundError,
  git_branch_not_found: GitBranchNotFoundError,
  sandbox_exists: SandboxExistsError,
  sandbox_not_running: SandboxNotRunningError,
  process_exists: ProcessExistsError,
  process_not_running: ProcessNotRunningError,
  session_exists: SessionExistsError,
  context_dead: ContextDeadError,
  image_in_use: ImageInUseError,
  mount_path_busy: MountPathBusyError,
  file_exists: FileExistsError,
  is_a_directory: IsADirectoryError,
  not_a_directory: NotADirectoryError,
  directory_not_empty: DirectoryNotEmptyError,
  not_a_regular_file: NotARegularFileError,
  read_only: ReadOnlyError,
  invalid_request: InvalidRequestError,
  invalid_sandbox_id: InvalidSandboxIdError,
  invalid_path: InvalidPathError,
  invalid_port: InvalidPortError,
  invalid_signal: InvalidSignalError,
  invalid_size: InvalidSizeError,
  unknown_language: UnknownLanguageError,
  language_unavailable: LanguageUnavailableError,
  invalid_git_url: InvalidGitUrlError,
  git_failed: GitError,
  git_not_installed: GitError,
  image_invalid: ImageInvalidError,
  image_architecture: ImageInvalidError,
  image_build_failed: ImageBuildFailedError,
  build_context_invalid: InvalidRequestError,
  image_has_no_entrypoint: InvalidRequestError,
  entrypoint_failed: InvalidRequestError,
  bucket_mount_failed: BucketMountFailedError,
  permission_denied: PermissionDeniedError,
  git_auth_failed: PermissionDeniedError,
  body_too_large: PayloadTooLargeError,
  no_space: NoSpaceError,
  internal: ServerError,
  registry_error: RegistryError,
  sandbox_unavailable: SandboxUnavailableError,
  sandbox_start_failed: SandboxStartFailedError,
  git_unreachable: GitUnreachableError,
  invalid_state: SandboxStateConflictError,
  snapshot_not_found: SnapshotNotFoundError,
  snapshot_exists: SnapshotExistsError,
  backup_not_found: BackupNotFoundError,
  backup_target_unreachable: BackupTargetUnreachableError,
  backup_failed: BackupFailedError,
};

function classForStatus(status: number): APIErrorClass {
  if (status === 401) return AuthenticationError;
  if (status === 403) return PermissionDeniedError;
  if (status === 404) return NotFoundError;
  if (status === 409) return ConflictError;
  if (status === 413) return PayloadTooLargeError;
  if (status === 507) return NoSpaceError;
  if (status >= 500) return ServerError;
  if (status >= 400) return InvalidRequestError;
  return APIError;
}

/** The error for a `code` (from a response body, a stream's RESULT or a WebSocket message). */
export function apiError(
  code: string,
  message: string,
  status: number,
  fields?: ErrorField[],
): APIError {
  const cls = ERROR_CLASSES[code] ?? classForStatus(status);
  return new cls(message, { status, code, fields: fields ?? [] });
}

/** The error for an error response whose body has been read as text. */
export function errorFromBody(status: number, text: string): APIError {
  try {
    const body = JSON.parse(text) as { error?: { code?: unknown; message?: unknown; fields?: unknown } };
    const error = body.error;
    if (error && typeof error.code === "string") {
      const fields = Array.isArray(error.fields) ? (error.fields as ErrorField[]) : [];
      return apiError(error.code, String(error.message ?? error.code), status, fields);
    }
  } catch {
    // not JSON: a proxy in front of the server answered; keep its text
  }
  return apiError(
    status >= 500 ? "internal" : "http_error",
    `the server answered HTTP ${status}: ${text.slice(0, 300)}`,
    status,
  );
}

export interface ExecResultLike {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export class CommandTimeoutError extends HutchError {
  override name = "CommandTimeoutError";
  readonly code = "command_timeout";
  /** What the command wrote before it was killed (exit code 124). */
  readonly result: ExecResultLike;
  constructor(message: string, result: ExecResultLike) {
    super(message);
    this.result = result;
  }
}

export class ProcessTimeoutError extends HutchError {
  override name = "ProcessTimeoutError";
  readonly code = "process_timeout";
  readonly process: unknown;
  constructor(message: string, process?: unknown) {
    super(message);
    this.process = process;
  }
}

export class ProcessExitedError extends HutchError {
  override name = "ProcessExitedError";
  readonly code = "process_exited";
  readonly process: unknown;
  constructor(message: string, process?: unknown) {
    super(message);
    this.process = process;
  }
}

export class ConfigurationError extends HutchError {
  override name = "ConfigurationError";
  readonly code = "configuration";
}

export class HutchConnectionError extends HutchError {
  override name = "HutchConnectionError";
  readonly code = "connection_error";
}
