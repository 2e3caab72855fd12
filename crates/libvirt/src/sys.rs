//! The only unsafe code of the crate: libvirt's C API, loaded at run time, and libvirt's event
//! loop with the event callbacks.
//!
//! **Loading.** gvm-libvirt does not link libvirt, so gvm-vgpud and gvm-vgpu start on a host
//! without it (a plain-QEMU host, a GPU host without Debian's `libvirt0`). The first libvirt
//! operation of the process ([`api`]) opens [`LIBRARY`] with `dlopen` and resolves exactly the
//! functions this crate calls into one [`Api`] table; the result, success or failure, is kept
//! for the process, and the library is never unloaded, so the function pointers stay valid.
//! When it cannot be loaded every libvirt operation fails with
//! [`Error::LibraryMissing`](crate::Error::LibraryMissing), naming the package. [`LIBRARY_ENV`]
//! names another file to load instead (a libvirt outside the linker's path, or a test that
//! needs it missing).
//!
//! Every declaration follows libvirt's public headers (`/usr/include/libvirt/libvirt-host.h`,
//! `libvirt-domain.h`, `libvirt-event.h`, `libvirt-common.h`, `virterror.h`); each names the
//! header it comes from. They are part of libvirt's stable ABI (`libvirt.so.0` since 0.x):
//! functions are never removed or changed, enum values never renumbered.
//!
//! **Handles.** [`Connect`] and [`Domain`] own a `virConnectPtr` / `virDomainPtr` and release
//! it on drop; their methods are the safe calls the rest of the crate uses, each returning
//! libvirt's error of the calling thread as a [`LibvirtError`].
//!
//! **Events.** libvirt delivers domain events and connection-close notices by calling C
//! function pointers from inside its *event loop*. A client must register an event loop
//! implementation before it opens the connection that should receive events, and then keep
//! running it. [`ensure_event_loop`] registers libvirt's default implementation once per
//! process and runs it forever on one background thread. The callbacks do nothing but copy
//! what they were given into a [`Raw`] message on a channel: no user code ever runs inside
//! libvirt's loop, so a consumer may block or call libvirt again without deadlocking it.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString, OsString};
use std::ptr::NonNull;
use std::sync::mpsc::Sender;
use std::sync::OnceLock;
use std::time::Duration;

use libloading::Library;
use uuid::Uuid;

use crate::error::{Error, LibvirtError, Result};

/// The file loaded: libvirt's client library by its soname (Debian's `libvirt0` package).
pub const LIBRARY: &str = "libvirt.so.0";
/// The environment variable naming a file to load instead of [`LIBRARY`] (a path or another
/// soname).
pub const LIBRARY_ENV: &str = "GVM_LIBVIRT_LIBRARY";

// --- libvirt's types -------------------------------------------------------------------------

/// `struct _virConnect` (libvirt-host.h): opaque.
#[repr(C)]
pub(crate) struct VirConnect {
    _opaque: [u8; 0],
}

/// `struct _virDomain` (libvirt-domain.h): opaque.
#[repr(C)]
pub(crate) struct VirDomain {
    _opaque: [u8; 0],
}

/// `virConnectPtr`.
type ConnectPtr = *mut VirConnect;
/// `virDomainPtr`.
type DomainPtr = *mut VirDomain;

/// The leading fields of `struct _virError` (virterror.h), in its order: `int code` (a
/// `virErrorNumber`), `int domain` (a `virErrorDomain`), `char *message`. More fields follow
/// in libvirt; this crate only reads these through the pointer `virGetLastError` returns and
/// never allocates one, so declaring the prefix is enough.
#[repr(C)]
struct VirError {
    code: c_int,
    /// Not read: declared for the layout (it lies between `code` and `message`).
    domain: c_int,
    message: *const c_char,
}

/// `virFreeCallback` (libvirt-common.h): `void (*)(void *opaque)`.
type FreeCallback = unsafe extern "C" fn(*mut c_void);
/// `virErrorFunc` (virterror.h): `void (*)(void *userData, virErrorPtr error)`.
type ErrorFunc = unsafe extern "C" fn(*mut c_void, *mut VirError);
/// `virConnectCloseFunc` (libvirt-host.h): `void (*)(virConnectPtr, int reason, void *opaque)`.
type CloseFunc = unsafe extern "C" fn(ConnectPtr, c_int, *mut c_void);
/// `virConnectDomainEventCallback` (libvirt-domain.h), the lifecycle event's callback:
/// `int (*)(virConnectPtr, virDomainPtr, int event, int detail, void *opaque)`.
type LifecycleCallback =
    unsafe extern "C" fn(ConnectPtr, DomainPtr, c_int, c_int, *mut c_void) -> c_int;
/// `virConnectDomainEventGenericCallback` (libvirt-domain.h): the type
/// `virConnectDomainEventRegisterAny` takes for every event, cast back by event id.
type GenericCallback = unsafe extern "C" fn(ConnectPtr, DomainPtr, *mut c_void);

/// `VIR_DOMAIN_AFFECT_LIVE` of `virDomainModificationImpact` (libvirt-domain.h).
pub(crate) const VIR_DOMAIN_AFFECT_LIVE: u32 = 1 << 0;
/// `VIR_DOMAIN_AFFECT_CONFIG` of `virDomainModificationImpact` (libvirt-domain.h).
pub(crate) const VIR_DOMAIN_AFFECT_CONFIG: u32 = 1 << 1;
/// `VIR_DOMAIN_METADATA_ELEMENT` of `virDomainMetadataType` (libvirt-domain.h).
pub(crate) const VIR_DOMAIN_METADATA_ELEMENT: c_int = 2;
/// `VIR_DOMAIN_XML_INACTIVE` of `virDomainXMLFlags` (libvirt-domain.h).
pub(crate) const VIR_DOMAIN_XML_INACTIVE: u32 = 1 << 1;
/// `VIR_DOMAIN_EVENT_ID_LIFECYCLE` of `virDomainEventID` (libvirt-domain.h).
const VIR_DOMAIN_EVENT_ID_LIFECYCLE: c_int = 0;
/// `VIR_UUID_STRING_BUFLEN` (libvirt-host.h): 36 characters and the NUL.
const VIR_UUID_STRING_BUFLEN: usize = 36 + 1;
/// `VIR_ERR_INTERNAL_ERROR` of `virErrorNumber` (virterror.h): reported when libvirt failed
/// without recording an error.
const VIR_ERR_INTERNAL_ERROR: i32 = 1;
/// `VIR_ERR_INVALID_ARG` of `virErrorNumber` (virterror.h): what a string with a NUL inside
/// is reported as, before libvirt is called.
const VIR_ERR_INVALID_ARG: i32 = 8;

// --- the function table ----------------------------------------------------------------------

/// The libvirt functions this crate calls, resolved from the loaded library. Each field's
/// type is the C declaration in the header named beside it.
pub(crate) struct Api {
    /// libvirt-host.h: `virConnectPtr virConnectOpen(const char *name)`.
    connect_open: unsafe extern "C" fn(*const c_char) -> ConnectPtr,
    /// libvirt-host.h: `int virConnectClose(virConnectPtr conn)`.
    connect_close: unsafe extern "C" fn(ConnectPtr) -> c_int,
    /// libvirt-host.h: `int virConnectSetKeepAlive(virConnectPtr, int interval, unsigned int count)`.
    connect_set_keep_alive: unsafe extern "C" fn(ConnectPtr, c_int, c_uint) -> c_int,
    /// libvirt-host.h: `int virConnectIsAlive(virConnectPtr conn)`.
    connect_is_alive: unsafe extern "C" fn(ConnectPtr) -> c_int,
    /// libvirt-host.h: `int virConnectRegisterCloseCallback(virConnectPtr,
    /// virConnectCloseFunc cb, void *opaque, virFreeCallback freecb)`.
    connect_register_close_callback:
        unsafe extern "C" fn(ConnectPtr, CloseFunc, *mut c_void, FreeCallback) -> c_int,
    /// libvirt-host.h: `int virConnectUnregisterCloseCallback(virConnectPtr, virConnectCloseFunc cb)`.
    connect_unregister_close_callback: unsafe extern "C" fn(ConnectPtr, CloseFunc) -> c_int,
    /// libvirt-domain.h: `int virConnectListAllDomains(virConnectPtr, virDomainPtr **domains,
    /// unsigned int flags)`.
    connect_list_all_domains:
        unsafe extern "C" fn(ConnectPtr, *mut *mut DomainPtr, c_uint) -> c_int,
    /// libvirt-domain.h: `int virConnectDomainEventRegisterAny(virConnectPtr, virDomainPtr dom,
    /// int eventID, virConnectDomainEventGenericCallback cb, void *opaque, virFreeCallback freecb)`.
    connect_domain_event_register_any: unsafe extern "C" fn(
        ConnectPtr,
        DomainPtr,
        c_int,
        GenericCallback,
        *mut c_void,
        FreeCallback,
    ) -> c_int,
    /// libvirt-domain.h: `int virConnectDomainEventDeregisterAny(virConnectPtr, int callbackID)`.
    connect_domain_event_deregister_any: unsafe extern "C" fn(ConnectPtr, c_int) -> c_int,
    /// libvirt-domain.h: `virDomainPtr virDomainLookupByName(virConnectPtr, const char *name)`.
    domain_lookup_by_name: unsafe extern "C" fn(ConnectPtr, *const c_char) -> DomainPtr,
    /// libvirt-domain.h: `int virDomainFree(virDomainPtr domain)`.
    domain_free: unsafe extern "C" fn(DomainPtr) -> c_int,
    /// libvirt-domain.h: `const char *virDomainGetName(virDomainPtr domain)`.
    domain_get_name: unsafe extern "C" fn(DomainPtr) -> *const c_char,
    /// libvirt-domain.h: `int virDomainGetUUIDString(virDomainPtr domain, char *buf)`.
    domain_get_uuid_string: unsafe extern "C" fn(DomainPtr, *mut c_char) -> c_int,
    /// libvirt-domain.h: `int virDomainGetState(virDomainPtr, int *state, int *reason,
    /// unsigned int flags)`.
    domain_get_state: unsafe extern "C" fn(DomainPtr, *mut c_int, *mut c_int, c_uint) -> c_int,
    /// libvirt-domain.h: `char *virDomainGetXMLDesc(virDomainPtr, unsigned int flags)`; the
    /// caller frees the string with `free()`.
    domain_get_xml_desc: unsafe extern "C" fn(DomainPtr, c_uint) -> *mut c_char,
    /// libvirt-domain.h: `int virDomainSuspend(virDomainPtr domain)`.
    domain_suspend: unsafe extern "C" fn(DomainPtr) -> c_int,
    /// libvirt-domain.h: `int virDomainResume(virDomainPtr domain)`.
    domain_resume: unsafe extern "C" fn(DomainPtr) -> c_int,
    /// libvirt-domain.h: `int virDomainAttachDeviceFlags(virDomainPtr, const char *xml,
    /// unsigned int flags)`.
    domain_attach_device_flags: unsafe extern "C" fn(DomainPtr, *const c_char, c_uint) -> c_int,
    /// libvirt-domain.h: `int virDomainDetachDeviceFlags(virDomainPtr, const char *xml,
    /// unsigned int flags)`.
    domain_detach_device_flags: unsafe extern "C" fn(DomainPtr, *const c_char, c_uint) -> c_int,
    /// libvirt-domain.h: `int virDomainSetMetadata(virDomainPtr, int type, const char *metadata,
    /// const char *key, const char *uri, unsigned int flags)`.
    domain_set_metadata: unsafe extern "C" fn(
        DomainPtr,
        c_int,
        *const c_char,
        *const c_char,
        *const c_char,
        c_uint,
    ) -> c_int,
    /// virterror.h: `virErrorPtr virGetLastError(void)`: this thread's last error, or NULL.
    get_last_error: unsafe extern "C" fn() -> *mut VirError,
    /// virterror.h: `void virSetErrorFunc(void *userData, virErrorFunc handler)`.
    set_error_func: unsafe extern "C" fn(*mut c_void, ErrorFunc),
    /// libvirt-event.h: `int virEventRegisterDefaultImpl(void)`.
    event_register_default_impl: unsafe extern "C" fn() -> c_int,
    /// libvirt-event.h: `int virEventRunDefaultImpl(void)`.
    event_run_default_impl: unsafe extern "C" fn() -> c_int,
    /// The loaded library; owning it here keeps every pointer above valid. The table lives in
    /// a process-wide static, so it is never unloaded.
    _library: Library,
}

/// What loading gave, once per process.
struct Loaded {
    /// The file asked for ([`LIBRARY`] or [`LIBRARY_ENV`]'s value).
    library: String,
    /// The table, or why the library or one of its functions could not be loaded.
    api: std::result::Result<Api, String>,
}

static LOADED: OnceLock<Loaded> = OnceLock::new();

/// The file to load: `override_name` ([`LIBRARY_ENV`]) when set and not empty, else
/// [`LIBRARY`].
pub(crate) fn library_name(override_name: Option<OsString>) -> OsString {
    override_name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| LIBRARY.into())
}

/// Load libvirt's client library now rather than on the first libvirt operation, to learn
/// whether this host has it: [`Error::LibraryMissing`] when it has not (install `libvirt0`).
/// Loaded once per process: later calls give the same answer at once.
pub fn load_library() -> Result<()> {
    api().map(drop)
}

/// The libvirt function table, loading the library on the first call of the process.
pub(crate) fn api() -> Result<&'static Api> {
    let loaded = LOADED.get_or_init(|| {
        let name = library_name(std::env::var_os(LIBRARY_ENV));
        let api = load(&name);
        if let Ok(api) = &api {
            quiet_default_errors(api);
        }
        Loaded {
            library: name.to_string_lossy().into_owned(),
            api,
        }
    });
    loaded.api.as_ref().map_err(|reason| Error::LibraryMissing {
        library: loaded.library.clone(),
        source: reason.clone().into(),
    })
}

/// Open `name` and resolve every function of [`Api`].
fn load(name: &std::ffi::OsStr) -> std::result::Result<Api, String> {
    // SAFETY: opening libvirt runs its ELF initialisers, which set up only libvirt's own
    // state; it is a C library meant to be loaded by any process (as `virsh` does).
    let library = unsafe { Library::new(name) }.map_err(|e| e.to_string())?;
    macro_rules! function {
        ($symbol:literal) => {{
            // SAFETY: the field this initialises has the C type libvirt's header declares for
            // the symbol (see the field's comment); the pointer is copied out of the `Symbol`,
            // and the library it points into is stored in the same table, never unloaded.
            let symbol = unsafe { library.get(concat!($symbol, "\0").as_bytes()) };
            *symbol
                .map_err(|e| format!("{e} (not libvirt, or a libvirt older than gvm-vgpu needs)"))?
        }};
    }
    Ok(Api {
        connect_open: function!("virConnectOpen"),
        connect_close: function!("virConnectClose"),
        connect_set_keep_alive: function!("virConnectSetKeepAlive"),
        connect_is_alive: function!("virConnectIsAlive"),
        connect_register_close_callback: function!("virConnectRegisterCloseCallback"),
        connect_unregister_close_callback: function!("virConnectUnregisterCloseCallback"),
        connect_list_all_domains: function!("virConnectListAllDomains"),
        connect_domain_event_register_any: function!("virConnectDomainEventRegisterAny"),
        connect_domain_event_deregister_any: function!("virConnectDomainEventDeregisterAny"),
        domain_lookup_by_name: function!("virDomainLookupByName"),
        domain_free: function!("virDomainFree"),
        domain_get_name: function!("virDomainGetName"),
        domain_get_uuid_string: function!("virDomainGetUUIDString"),
        domain_get_state: function!("virDomainGetState"),
        domain_get_xml_desc: function!("virDomainGetXMLDesc"),
        domain_suspend: function!("virDomainSuspend"),
        domain_resume: function!("virDomainResume"),
        domain_attach_device_flags: function!("virDomainAttachDeviceFlags"),
        domain_detach_device_flags: function!("virDomainDetachDeviceFlags"),
        domain_set_metadata: function!("virDomainSetMetadata"),
        get_last_error: function!("virGetLastError"),
        set_error_func: function!("virSetErrorFunc"),
        event_register_default_impl: function!("virEventRegisterDefaultImpl"),
        event_run_default_impl: function!("virEventRunDefaultImpl"),
        _library: library,
    })
}

/// Stop libvirt from printing every error to standard error (its default): this crate returns
/// them, with context, as [`crate::Error`]. Process-wide, done once when the library is
/// loaded; the errors themselves are still recorded per thread for `virGetLastError`.
fn quiet_default_errors(api: &Api) {
    // SAFETY: installs a handler that ignores its arguments; no user data is passed.
    unsafe { (api.set_error_func)(std::ptr::null_mut(), ignore_error) };
}

unsafe extern "C" fn ignore_error(_user: *mut c_void, _error: *mut VirError) {}

impl Api {
    /// libvirt's last error on this thread, copied.
    fn last_error(&self) -> LibvirtError {
        // SAFETY: virGetLastError returns NULL or this thread's error object, which stays
        // valid until the thread's next libvirt call; it is copied before returning.
        unsafe {
            let error = (self.get_last_error)();
            match error.as_ref() {
                None => LibvirtError {
                    code: VIR_ERR_INTERNAL_ERROR,
                    message: "an unknown libvirt error occurred".into(),
                },
                Some(e) => LibvirtError {
                    code: e.code,
                    message: if e.message.is_null() {
                        "(libvirt gave no message)".into()
                    } else {
                        CStr::from_ptr(e.message).to_string_lossy().into_owned()
                    },
                },
            }
        }
    }

    /// `virConnectOpen(uri)`: a read-write connection.
    pub(crate) fn open(&'static self, uri: &str) -> std::result::Result<Connect, LibvirtError> {
        let uri = c_string(uri, "URI")?;
        // SAFETY: `uri` is a NUL-terminated string that outlives the call.
        let ptr = unsafe { (self.connect_open)(uri.as_ptr()) };
        match NonNull::new(ptr) {
            Some(ptr) => Ok(Connect { api: self, ptr }),
            None => Err(self.last_error()),
        }
    }
}

/// `s` as a C string; an interior NUL is refused as libvirt would refuse a bad argument.
fn c_string(s: &str, what: &str) -> std::result::Result<CString, LibvirtError> {
    CString::new(s).map_err(|_| LibvirtError {
        code: VIR_ERR_INVALID_ARG,
        message: format!("the {what} contains a NUL byte"),
    })
}

// --- handles ---------------------------------------------------------------------------------

/// One open libvirt connection (`virConnectPtr`); closed on drop.
pub(crate) struct Connect {
    api: &'static Api,
    ptr: NonNull<VirConnect>,
}

// SAFETY: libvirt's public API is thread-safe: a connection may be used from several threads
// at once (libvirt's "Thread safety" documentation), as `virsh` and libvirt's own bindings do.
unsafe impl Send for Connect {}
// SAFETY: as for `Send`.
unsafe impl Sync for Connect {}

impl Drop for Connect {
    fn drop(&mut self) {
        // SAFETY: the pointer is owned by this handle and not used after. A failure to close
        // only leaks the handle; nothing to report from a destructor.
        unsafe { (self.api.connect_close)(self.ptr.as_ptr()) };
    }
}

impl Connect {
    fn ptr(&self) -> ConnectPtr {
        self.ptr.as_ptr()
    }

    fn domain_from(&self, ptr: DomainPtr) -> std::result::Result<Domain, LibvirtError> {
        match NonNull::new(ptr) {
            Some(ptr) => Ok(Domain { api: self.api, ptr }),
            None => Err(self.api.last_error()),
        }
    }

    /// `virDomainLookupByName`.
    pub(crate) fn lookup_domain(&self, name: &str) -> std::result::Result<Domain, LibvirtError> {
        let name = c_string(name, "domain name")?;
        // SAFETY: the connection is live; `name` outlives the call.
        let ptr = unsafe { (self.api.domain_lookup_by_name)(self.ptr(), name.as_ptr()) };
        self.domain_from(ptr)
    }

    /// `virConnectListAllDomains` with `flags` (0: every domain, running or only defined).
    pub(crate) fn list_all_domains(
        &self,
        flags: u32,
    ) -> std::result::Result<Vec<Domain>, LibvirtError> {
        let mut array: *mut DomainPtr = std::ptr::null_mut();
        // SAFETY: the connection is live; libvirt stores a malloc'd array of `count` domain
        // pointers in `array`.
        let count = unsafe { (self.api.connect_list_all_domains)(self.ptr(), &mut array, flags) };
        let Ok(count) = usize::try_from(count) else {
            return Err(self.api.last_error());
        };
        let mut domains = Vec::with_capacity(count);
        if !array.is_null() {
            for i in 0..count {
                // SAFETY: `array` holds `count` domain pointers, each a reference the caller
                // owns: the `Domain` takes it over and frees it on drop.
                let ptr = unsafe { *array.add(i) };
                if let Some(ptr) = NonNull::new(ptr) {
                    domains.push(Domain { api: self.api, ptr });
                }
            }
            // SAFETY: the array itself was allocated by libvirt with malloc, freed once here.
            unsafe { libc::free(array.cast::<c_void>()) };
        }
        Ok(domains)
    }

    /// Whether libvirt still considers the connection alive (`virConnectIsAlive`).
    pub(crate) fn is_alive(&self) -> bool {
        // SAFETY: the connection is live.
        unsafe { (self.api.connect_is_alive)(self.ptr()) == 1 }
    }

    /// Register the lifecycle and close callbacks, and turn on keepalive (`interval` seconds,
    /// `count` unanswered probes before the connection is declared dead).
    pub(crate) fn register(
        &self,
        generation: u64,
        tx: &Sender<Raw>,
        keepalive: (i32, u32),
    ) -> std::result::Result<Registration, LibvirtError> {
        let api = self.api;
        let ptr = self.ptr();
        let close_sink = Box::into_raw(Box::new(Sink {
            api,
            generation,
            tx: tx.clone(),
        }));
        // SAFETY: the connection is live. `close_sink` is a valid heap pointer whose ownership
        // passes to libvirt, which calls `free_sink` on it exactly once (when the callback is
        // unregistered or the connection freed); `on_close` only reads it.
        let rc = unsafe {
            (api.connect_register_close_callback)(
                ptr,
                on_close,
                close_sink.cast::<c_void>(),
                free_sink,
            )
        };
        if rc < 0 {
            let err = api.last_error();
            // SAFETY: registration failed, so libvirt did not take ownership: free it once.
            drop(unsafe { Box::from_raw(close_sink) });
            return Err(err);
        }
        let life_sink = Box::into_raw(Box::new(Sink {
            api,
            generation,
            tx: tx.clone(),
        }));
        // libvirt declares every event callback with the generic type and casts it back by
        // event id (its VIR_DOMAIN_EVENT_CALLBACK macro); do the same.
        let lifecycle: LifecycleCallback = on_lifecycle;
        // SAFETY: both are `extern "C"` function pointers; libvirt calls this one with the
        // lifecycle signature because it is registered for VIR_DOMAIN_EVENT_ID_LIFECYCLE.
        let generic: GenericCallback = unsafe { std::mem::transmute(lifecycle) };
        // SAFETY: as for the close callback: `life_sink` passes to libvirt, freed by
        // `free_sink`. A NULL domain means every domain.
        let id = unsafe {
            (api.connect_domain_event_register_any)(
                ptr,
                std::ptr::null_mut(),
                VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                generic,
                life_sink.cast::<c_void>(),
                free_sink,
            )
        };
        if id < 0 {
            let err = api.last_error();
            // SAFETY: registration failed: we still own `life_sink`.
            drop(unsafe { Box::from_raw(life_sink) });
            // SAFETY: the connection is live; unregistering our own close callback frees its
            // sink.
            unsafe { (api.connect_unregister_close_callback)(ptr, on_close) };
            return Err(err);
        }
        // SAFETY: the connection is live. Keepalive only fails on drivers without it (e.g.
        // test:///), where the close callback still reports EOF: ignore the result.
        unsafe { (api.connect_set_keep_alive)(ptr, keepalive.0, keepalive.1) };
        Ok(Registration { lifecycle_id: id })
    }

    /// Undo [`Connect::register`]. Failures (a dead connection) are ignored: freeing the
    /// connection releases the callbacks anyway.
    pub(crate) fn deregister(&self, reg: Registration) {
        // SAFETY: the connection is live; the id and function pointer are the ones registered
        // on it.
        unsafe {
            (self.api.connect_domain_event_deregister_any)(self.ptr(), reg.lifecycle_id);
            (self.api.connect_unregister_close_callback)(self.ptr(), on_close);
        }
    }
}

/// One domain reference (`virDomainPtr`); freed on drop.
pub(crate) struct Domain {
    api: &'static Api,
    ptr: NonNull<VirDomain>,
}

// SAFETY: as for `Connect`: libvirt's domain objects may be used from any thread.
unsafe impl Send for Domain {}
// SAFETY: as for `Send`.
unsafe impl Sync for Domain {}

impl Drop for Domain {
    fn drop(&mut self) {
        // SAFETY: the reference is owned by this handle and not used after.
        unsafe { (self.api.domain_free)(self.ptr.as_ptr()) };
    }
}

impl Domain {
    fn ptr(&self) -> DomainPtr {
        self.ptr.as_ptr()
    }

    /// `0` from a call, else this thread's libvirt error.
    fn check(&self, rc: c_int) -> std::result::Result<(), LibvirtError> {
        if rc < 0 {
            Err(self.api.last_error())
        } else {
            Ok(())
        }
    }

    /// `virDomainGetName`.
    pub(crate) fn name(&self) -> std::result::Result<String, LibvirtError> {
        // SAFETY: the domain is live; the name belongs to it and is copied before returning.
        unsafe { owned_name(self.api, self.ptr()) }.ok_or_else(|| self.api.last_error())
    }

    /// `virDomainGetState`: libvirt's `virDomainState` number.
    pub(crate) fn state(&self) -> std::result::Result<u32, LibvirtError> {
        let (mut state, mut reason): (c_int, c_int) = (-1, -1);
        // SAFETY: the domain is live; both out-pointers point at locals.
        let rc = unsafe { (self.api.domain_get_state)(self.ptr(), &mut state, &mut reason, 0) };
        self.check(rc)?;
        Ok(u32::try_from(state).unwrap_or(u32::MAX))
    }

    /// `virDomainGetXMLDesc` with `flags`.
    pub(crate) fn xml_desc(&self, flags: u32) -> std::result::Result<String, LibvirtError> {
        // SAFETY: the domain is live; a non-NULL result is a malloc'd NUL-terminated string the
        // caller owns: copied, then freed once.
        unsafe {
            let xml = (self.api.domain_get_xml_desc)(self.ptr(), flags);
            if xml.is_null() {
                return Err(self.api.last_error());
            }
            let copy = CStr::from_ptr(xml).to_string_lossy().into_owned();
            libc::free(xml.cast::<c_void>());
            Ok(copy)
        }
    }

    /// `virDomainSuspend`.
    pub(crate) fn suspend(&self) -> std::result::Result<(), LibvirtError> {
        // SAFETY: the domain is live.
        self.check(unsafe { (self.api.domain_suspend)(self.ptr()) })
    }

    /// `virDomainResume`.
    pub(crate) fn resume(&self) -> std::result::Result<(), LibvirtError> {
        // SAFETY: the domain is live.
        self.check(unsafe { (self.api.domain_resume)(self.ptr()) })
    }

    /// `virDomainAttachDeviceFlags`.
    pub(crate) fn attach_device(
        &self,
        xml: &str,
        flags: u32,
    ) -> std::result::Result<(), LibvirtError> {
        let xml = c_string(xml, "device XML")?;
        // SAFETY: the domain is live; `xml` outlives the call.
        self.check(unsafe {
            (self.api.domain_attach_device_flags)(self.ptr(), xml.as_ptr(), flags)
        })
    }

    /// `virDomainDetachDeviceFlags`.
    pub(crate) fn detach_device(
        &self,
        xml: &str,
        flags: u32,
    ) -> std::result::Result<(), LibvirtError> {
        let xml = c_string(xml, "device XML")?;
        // SAFETY: the domain is live; `xml` outlives the call.
        self.check(unsafe {
            (self.api.domain_detach_device_flags)(self.ptr(), xml.as_ptr(), flags)
        })
    }

    /// `virDomainSetMetadata` of `kind` (e.g. [`VIR_DOMAIN_METADATA_ELEMENT`]); `metadata`
    /// `None` removes the element of namespace `uri`.
    pub(crate) fn set_metadata(
        &self,
        kind: c_int,
        metadata: Option<&str>,
        key: Option<&str>,
        uri: Option<&str>,
        flags: u32,
    ) -> std::result::Result<(), LibvirtError> {
        let metadata = metadata.map(|m| c_string(m, "metadata")).transpose()?;
        let key = key.map(|k| c_string(k, "metadata key")).transpose()?;
        let uri = uri.map(|u| c_string(u, "metadata namespace")).transpose()?;
        let or_null = |s: &Option<CString>| s.as_ref().map_or(std::ptr::null(), |s| s.as_ptr());
        // SAFETY: the domain is live; each pointer is NULL or a string that outlives the call.
        self.check(unsafe {
            (self.api.domain_set_metadata)(
                self.ptr(),
                kind,
                or_null(&metadata),
                or_null(&key),
                or_null(&uri),
                flags,
            )
        })
    }
}

/// `virDomainGetName` of `dom`, copied; `None` when libvirt returns NULL.
///
/// # Safety
/// `dom` must be a live domain pointer.
unsafe fn owned_name(api: &Api, dom: DomainPtr) -> Option<String> {
    // SAFETY: `dom` is live (the caller's promise); the name belongs to it and is copied.
    unsafe {
        let p = (api.domain_get_name)(dom);
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    }
}

// --- the event loop and the callbacks --------------------------------------------------------

/// What a callback saw, tagged with the generation of the connection it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Raw {
    /// A `VIR_DOMAIN_EVENT_ID_LIFECYCLE` event.
    Lifecycle {
        /// Connection generation.
        generation: u64,
        /// Domain name.
        name: String,
        /// Domain UUID.
        uuid: Option<Uuid>,
        /// `virDomainEventType`.
        event: i32,
        /// The event's detail (e.g. `VIR_DOMAIN_EVENT_STOPPED_DESTROYED`).
        detail: i32,
    },
    /// The connection closed (`virConnectCloseReason`).
    Closed {
        /// Connection generation.
        generation: u64,
        /// The reason code.
        reason: i32,
    },
    /// Not from libvirt: the watch's owner asks it to stop.
    Stop,
}

/// What a callback holds: the library, where to send, and which connection it belongs to.
struct Sink {
    api: &'static Api,
    generation: u64,
    tx: Sender<Raw>,
}

/// Callback registrations on one connection; give them back with [`Connect::deregister`].
#[derive(Debug)]
pub(crate) struct Registration {
    lifecycle_id: c_int,
}

/// The result of registering the default event loop (once per process).
static EVENT_LOOP: OnceLock<std::result::Result<(), LibvirtError>> = OnceLock::new();

/// Register libvirt's default event loop and run it on a detached thread, once per process.
/// Must happen before opening a connection that should deliver events.
pub(crate) fn ensure_event_loop(api: &'static Api) -> std::result::Result<(), LibvirtError> {
    EVENT_LOOP
        .get_or_init(|| {
            // SAFETY: no arguments; registers libvirt's own poll-based loop process-wide.
            if unsafe { (api.event_register_default_impl)() } < 0 {
                return Err(api.last_error());
            }
            std::thread::Builder::new()
                .name("libvirt-event-loop".into())
                .spawn(move || loop {
                    // SAFETY: the default loop is registered (above); this is the one thread
                    // that runs it.
                    if unsafe { (api.event_run_default_impl)() } < 0 {
                        // Only fails on a broken poll(); avoid spinning.
                        std::thread::sleep(Duration::from_millis(100));
                    }
                })
                .map(drop)
                .map_err(|e| LibvirtError {
                    code: -1,
                    message: format!("cannot spawn the libvirt event loop thread: {e}"),
                })
        })
        .clone()
}

/// Free a [`Sink`] handed to libvirt.
unsafe extern "C" fn free_sink(opaque: *mut c_void) {
    if !opaque.is_null() {
        // SAFETY: every opaque registered with this free function came from
        // `Box::into_raw(Box<Sink>)`, and libvirt calls it once.
        drop(unsafe { Box::from_raw(opaque.cast::<Sink>()) });
    }
}

unsafe extern "C" fn on_close(_conn: ConnectPtr, reason: c_int, opaque: *mut c_void) {
    // SAFETY: `opaque` is the live `Sink` registered with this callback (freed only after
    // unregistering, which cannot run concurrently with a callback in libvirt's loop).
    let Some(sink) = (unsafe { opaque.cast::<Sink>().as_ref() }) else {
        return;
    };
    // The receiver may be gone (watch stopped): nothing to do then.
    let _ = sink.tx.send(Raw::Closed {
        generation: sink.generation,
        reason,
    });
}

unsafe extern "C" fn on_lifecycle(
    _conn: ConnectPtr,
    dom: DomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: as in `on_close`.
    let Some(sink) = (unsafe { opaque.cast::<Sink>().as_ref() }) else {
        return 0;
    };
    // SAFETY: `dom` is valid for the duration of the callback.
    let name = unsafe { owned_name(sink.api, dom) }.unwrap_or_default();
    let mut buf = [0 as c_char; VIR_UUID_STRING_BUFLEN];
    // SAFETY: `buf` has VIR_UUID_STRING_BUFLEN bytes, which is what libvirt writes (with NUL);
    // `dom` is valid for the duration of the callback.
    let uuid = unsafe {
        if (sink.api.domain_get_uuid_string)(dom, buf.as_mut_ptr()) == 0 {
            CStr::from_ptr(buf.as_ptr())
                .to_str()
                .ok()
                .and_then(|s| Uuid::try_parse(s).ok())
        } else {
            None
        }
    };
    let _ = sink.tx.send(Raw::Lifecycle {
        generation: sink.generation,
        name,
        uuid,
        event,
        detail,
    });
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_override_names_the_file_else_the_soname() {
        assert_eq!(library_name(None), LIBRARY);
        assert_eq!(library_name(Some("".into())), LIBRARY);
        assert_eq!(
            library_name(Some("/opt/libvirt/lib/libvirt.so.0".into())),
            "/opt/libvirt/lib/libvirt.so.0"
        );
    }

    #[test]
    fn a_string_with_a_nul_is_refused_before_libvirt_sees_it() {
        let Err(e) = c_string("web\0x", "domain name") else {
            panic!("a NUL byte passed");
        };
        assert_eq!(e.code, VIR_ERR_INVALID_ARG);
        assert!(e.message.contains("domain name"), "{}", e.message);
        assert!(c_string("web1", "domain name").is_ok());
    }

    #[test]
    fn a_missing_library_is_an_error_naming_it() {
        let Err(reason) = load("/nonexistent/libvirt.so.0".as_ref()) else {
            panic!("loading a file that does not exist succeeded");
        };
        assert!(reason.contains("/nonexistent/libvirt.so.0"), "{reason}");
    }

    #[test]
    fn a_library_without_libvirt_functions_is_refused_naming_the_function() {
        // The C library is loaded in every process, and has none of libvirt's functions.
        let Err(reason) = load("libc.so.6".as_ref()) else {
            panic!("libc passed for libvirt");
        };
        assert!(reason.contains("virConnectOpen"), "{reason}");
    }
}
