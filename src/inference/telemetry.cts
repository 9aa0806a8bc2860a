// ONNX Runtime's Linux build (onnxruntime-node 1.30) carries Microsoft's 1DS telemetry client: when
// it creates its environment (the first session) it writes a device id under
// ~/.cache/Microsoft/DeveloperTools and uploads usage events to mobile.events.data.microsoft.com.
// A service must not report on its host to a third party unasked, so it is off unless the operator
// turns it on (ORT_DISABLE_TELEMETRY=0). ORT reads ORT_DISABLE_TELEMETRY with getenv() once, when it
// creates that environment; "1", "true", "yes", "on" or "y" turn the client off for the process
// (onnxruntime/core/platform/telemetry_environment.h, IsTelemetryDisabledByEnvironment).
//
// Imported before ORT can load: by the module that starts the inference worker and by the --fp16
// guard, and required by the --require preload (src/threadpool.cts). It must run in the MAIN
// thread: only there does setting process.env change the process environment that native code
// reads; a worker thread's process.env is a copy invisible to getenv().

/** The variable ONNX Runtime reads; this module sets it to "1" when it is unset or empty. */
export const ORT_TELEMETRY_VARIABLE = 'ORT_DISABLE_TELEMETRY';

if (!process.env[ORT_TELEMETRY_VARIABLE]) process.env[ORT_TELEMETRY_VARIABLE] = '1';
