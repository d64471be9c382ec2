// The hosted pages' one script. Reset and verification: it reads the token from the link and
// POSTs it to the service's JSON API only when the person presses the button (opening the link
// spends nothing). The account page: it signs in with the JSON API (the second step when the
// account asks for one) and keeps the tokens in this page's memory only (a reload signs out):
// never in storage or a cookie. Two-step sign-in: the QR code is drawn by the service
// (POST account/qr), the recovery codes are shown once and offered as a text file.
(function () {
  "use strict";

  function $(id) {
    return document.getElementById(id);
  }

  // The pages live at <base>/account...; the API at <base>/auth/...
  var path = window.location.pathname;
  var base = window.location.origin + path.slice(0, path.lastIndexOf("/account"));

  function request(method, route, body, bearer) {
    var headers = { "Accept": "application/json" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
    }
    if (bearer) {
      headers["Authorization"] = "Bearer " + bearer;
    }
    return fetch(base + "/" + route, {
      method: method,
      headers: headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer"
    }).then(function (response) {
      return response.json().catch(function () { return {}; }).then(function (json) {
        return { status: response.status, body: json, headers: response.headers };
      });
    });
  }

  function list(element, messages) {
    element.textContent = "";
    messages.forEach(function (message) {
      var item = document.createElement("li");
      item.textContent = message;
      element.appendChild(item);
    });
  }

  function reasonsOf(answer) {
    if (answer.body.errors && answer.body.errors.length) {
      return answer.body.errors.map(function (e) { return e.message; });
    }
    return [answer.body.detail || "Something went wrong; try again."];
  }

  // Disables the form's button while `work` runs; a network failure says so.
  function onSubmit(form, work, failed) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var button = form.querySelector("button[type=submit]");
      button.disabled = true;
      Promise.resolve().then(work).catch(failed).then(function () {
        button.disabled = false;
      });
    });
  }

  // --- reset and verification ---------------------------------------------------------------
  var token = new URLSearchParams(window.location.search).get("token") || "";

  function show(id) {
    ["missing", "reset-form", "verify-form", "done", "expired", "failed"].forEach(function (name) {
      var element = $(name);
      if (element) {
        element.hidden = name !== id;
      }
    });
  }

  function tokenPage(formId, work) {
    var form = $(formId);
    if (!form) {
      return;
    }
    if (!token) {
      show("missing");
      return;
    }
    show(formId);
    onSubmit(form, work, function () { show("failed"); });
  }

  tokenPage("reset-form", function () {
    var reasons = $("reasons");
    var password = $("new-password").value;
    if (password !== $("repeat-password").value) {
      list(reasons, ["the two passwords differ"]);
      return null;
    }
    return request("POST", "auth/password/reset", { token: token, new_password: password })
      .then(function (answer) {
        if (answer.status === 200) {
          show("done");
        } else if (answer.body.error_code === "INVALID_RESET_TOKEN") {
          show("expired");
        } else {
          list(reasons, reasonsOf(answer));
          $("new-password").focus();
        }
      });
  });

  tokenPage("verify-form", function () {
    return request("POST", "auth/email/verify", { token: token }).then(function (answer) {
      if (answer.status === 200) {
        show("done");
      } else if (answer.body.error_code === "INVALID_VERIFICATION_TOKEN") {
        show("expired");
      } else {
        show("failed");
      }
    });
  });

  // --- the account page ---------------------------------------------------------------------
  if (!$("signin-form")) {
    return;
  }
  var tokens = null;

  function view(name) {
    ["signin-form", "mfa-form", "account", "signed-out"].forEach(function (id) {
      $(id).hidden = id !== name;
    });
  }

  function signedOut(message) {
    tokens = null;
    closeEnrolment();
    list($("recovery-codes"), []);
    $("recovery").hidden = true;
    $("mfa-section-error").hidden = true;
    $("signed-out-text").textContent = message;
    view("signed-out");
  }

  // An API call with the access token; an expired one is refreshed once.
  function call(method, route, body, retried) {
    return request(method, route, body, tokens && tokens.access_token).then(function (answer) {
      if (answer.status === 401 && answer.body.error_code === "INVALID_TOKEN" && tokens && !retried) {
        return request("POST", "auth/refresh", { refresh_token: tokens.refresh_token })
          .then(function (refreshed) {
            if (refreshed.status !== 200) {
              signedOut("Your sign-in has ended. Sign in again.");
              return answer;
            }
            tokens = refreshed.body;
            return call(method, route, body, true);
          });
      }
      return answer;
    });
  }

  function when(iso) {
    return iso ? new Date(iso).toLocaleString() : "never";
  }

  function loadSessions() {
    return call("GET", "auth/sessions").then(function (answer) {
      if (answer.status !== 200) {
        return;
      }
      var sessions = $("sessions");
      sessions.textContent = "";
      answer.body.sessions.forEach(function (session) {
        var item = document.createElement("li");
        var device = document.createElement("span");
        device.className = "device";
        device.textContent = session.user_agent || "An unknown device";
        var seen = document.createElement("span");
        seen.className = "when";
        seen.textContent = "Last used " + when(session.last_used_at) +
          (session.ip ? " from " + session.ip : "");
        item.appendChild(device);
        item.appendChild(seen);
        if (session.current) {
          var current = document.createElement("span");
          current.className = "current";
          current.textContent = "This device";
          item.appendChild(current);
        } else {
          var end = document.createElement("button");
          end.type = "button";
          end.className = "secondary";
          end.textContent = "Sign out this device";
          end.addEventListener("click", function () {
            end.disabled = true;
            call("DELETE", "auth/sessions/" + encodeURIComponent(session.sid)).then(loadSessions);
          });
          item.appendChild(end);
        }
        sessions.appendChild(item);
      });
    });
  }

  view("signin-form");
  $("signin-again").addEventListener("click", function () {
    $("signin-password").value = "";
    view("signin-form");
  });

  function tooMany(answer) {
    return "Too many attempts. Try again in " +
      Math.ceil(Number(answer.headers.get("retry-after") || 60) / 60) + " minutes.";
  }

  // Signed in: the account's sections, filled from the API.
  function enter(answer, email) {
    tokens = answer.body;
    $("who").textContent = email;
    view("account");
    return Promise.all([loadSessions(), loadFactors(), loadPasskeys()]);
  }

  var mfaToken = null;
  var signingIn = "";
  var useRecovery = false;

  function askSecondStep(recovery) {
    useRecovery = recovery;
    $("mfa-code").value = "";
    $("mfa-error").hidden = true;
    $("mfa-code-label").textContent = recovery ? "Recovery code" : "Code from the app";
    $("mfa-prompt").textContent = recovery
      ? "Enter one of the recovery codes you saved when you turned on two-step sign-in."
      : "Your account asks for a second step. Enter the code your authenticator app shows.";
    $("mfa-use-recovery").textContent = recovery
      ? "Use the code from the app instead" : "Use a recovery code instead";
    $("mfa-code").setAttribute("inputmode", recovery ? "text" : "numeric");
    view("mfa-form");
    $("mfa-code").focus();
  }

  onSubmit($("signin-form"), function () {
    var error = $("signin-error");
    error.hidden = true;
    var email = $("signin-email").value;
    return request("POST", "auth/login", { email: email, password: $("signin-password").value })
      .then(function (answer) {
        if (answer.status === 200) {
          $("signin-password").value = "";
          return enter(answer, email);
        }
        var code = answer.body.error_code;
        if (code === "MFA_REQUIRED") {
          $("signin-password").value = "";
          mfaToken = answer.body.mfa_token;
          signingIn = email;
          askSecondStep(false);
          return null;
        }
        error.textContent = code === "INVALID_CREDENTIALS" ? "Wrong email or password."
          : code === "TOO_MANY_ATTEMPTS" ? tooMany(answer)
          : code === "EMAIL_NOT_VERIFIED" ? "Confirm your email address first: open the link we sent you."
          : answer.body.detail || "Something went wrong; try again.";
        error.hidden = false;
        return null;
      });
  }, function () {
    $("signin-error").textContent = "The service could not be reached. Try again in a moment.";
    $("signin-error").hidden = false;
  });

  $("mfa-use-recovery").addEventListener("click", function () {
    askSecondStep(!useRecovery);
  });

  onSubmit($("mfa-form"), function () {
    var error = $("mfa-error");
    error.hidden = true;
    var body = { mfa_token: mfaToken };
    body[useRecovery ? "recovery_code" : "code"] = $("mfa-code").value.trim();
    return request("POST", "auth/mfa/verify", body).then(function (answer) {
      if (answer.status === 200) {
        mfaToken = null;
        $("mfa-code").value = "";
        return enter(answer, signingIn);
      }
      var code = answer.body.error_code;
      if (code === "INVALID_MFA_TOKEN") {
        $("signin-error").textContent = "The sign-in took too long. Sign in again.";
        $("signin-error").hidden = false;
        view("signin-form");
        return null;
      }
      error.textContent = code === "INVALID_MFA_CODE"
        ? (useRecovery ? "That recovery code is not right, or was used already."
          : "That code is not right. Enter the newest code the app shows.")
        : code === "TOO_MANY_ATTEMPTS" ? tooMany(answer)
        : reasonsOf(answer).join("; ");
      error.hidden = false;
      $("mfa-code").focus();
      return null;
    });
  }, function () {
    $("mfa-error").textContent = "The service could not be reached. Try again in a moment.";
    $("mfa-error").hidden = false;
  });

  // --- two-step sign-in on the account page -------------------------------------------------
  var enrolling = null;

  function sectionError(answer) {
    var error = $("mfa-section-error");
    error.textContent = answer.body.error_code === "MFA_STEP_UP_REQUIRED"
      ? "For this, sign out and sign in again with your second step."
      : reasonsOf(answer).join("; ");
    error.hidden = false;
  }

  // A listed factor or passkey: its label, when it was added and last used, and "Remove", which
  // DELETEs `route` and reloads the list, or hands the refusal to `failed`.
  function removableItem(label, listed, route, errorId, failed, reload) {
    var item = document.createElement("li");
    var name = document.createElement("span");
    name.className = "device";
    name.textContent = label;
    var used = document.createElement("span");
    used.className = "when";
    used.textContent = "Added " + when(listed.created_at) + "; last used " + when(listed.last_used_at);
    var remove = document.createElement("button");
    remove.type = "button";
    remove.className = "secondary";
    remove.textContent = "Remove";
    remove.addEventListener("click", function () {
      remove.disabled = true;
      $(errorId).hidden = true;
      call("DELETE", route).then(function (removed) {
        if (removed.status !== 200) {
          failed(removed);
          remove.disabled = false;
          return null;
        }
        return reload();
      });
    });
    item.appendChild(name);
    item.appendChild(used);
    item.appendChild(remove);
    return item;
  }

  function loadFactors() {
    return call("GET", "auth/mfa/factors").then(function (answer) {
      if (answer.status !== 200) {
        return;
      }
      var factors = $("factors");
      factors.textContent = "";
      answer.body.factors.forEach(function (factor, index) {
        factors.appendChild(removableItem("Authenticator app " + (index + 1), factor,
          "auth/mfa/factors/" + encodeURIComponent(factor.factor_id), "mfa-section-error",
          sectionError, loadFactors));
      });
      var on = answer.body.factors.length > 0;
      $("mfa-state").textContent = on
        ? "On: signing in asks for a code from your app. " +
          answer.body.recovery_codes_remaining + " recovery codes left."
        : "Off: your password alone signs you in. Add an authenticator app to ask for a code too.";
      $("mfa-new-codes").hidden = !on;
      if (!on) {
        $("recovery").hidden = true;
      }
    });
  }

  function showCodes(codes) {
    list($("recovery-codes"), codes);
    var link = $("recovery-download");
    if (link.href.indexOf("blob:") === 0) {
      URL.revokeObjectURL(link.href);
    }
    var text = "Recovery codes for " + $("who").textContent + "\n" +
      "Each works once, in place of a code from your app.\n\n" + codes.join("\n") + "\n";
    link.href = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
    $("recovery").hidden = false;
  }

  function drawQr(uri) {
    return fetch(base + "/account/qr", {
      method: "POST",
      headers: { "Content-Type": "application/json", "Accept": "image/svg+xml" },
      body: JSON.stringify({ otpauth_uri: uri }),
      credentials: "omit",
      cache: "no-store",
      referrerPolicy: "no-referrer"
    }).then(function (response) {
      return response.ok ? response.text() : "";
    }).then(function (svg) {
      var box = $("mfa-qr");
      box.textContent = "";
      var picture = new DOMParser().parseFromString(svg, "image/svg+xml").documentElement;
      if (picture && picture.nodeName === "svg") {
        box.appendChild(document.importNode(picture, true));
      }
    });
  }

  $("mfa-add").addEventListener("click", function () {
    var add = $("mfa-add");
    add.disabled = true;
    $("mfa-section-error").hidden = true;
    call("POST", "auth/mfa/totp", {}).then(function (answer) {
      if (answer.status !== 201) {
        sectionError(answer);
        return null;
      }
      enrolling = answer.body.factor_id;
      $("mfa-secret").textContent = answer.body.secret;
      $("mfa-enrol-code").value = "";
      $("mfa-enrol-error").hidden = true;
      $("mfa-enrol-form").hidden = false;
      add.hidden = true;
      return drawQr(answer.body.otpauth_uri).then(function () {
        $("mfa-enrol-code").focus();
      });
    }).catch(function () {
      $("mfa-section-error").textContent = "The service could not be reached. Try again in a moment.";
      $("mfa-section-error").hidden = false;
    }).then(function () {
      add.disabled = false;
    });
  });

  function closeEnrolment() {
    enrolling = null;
    $("mfa-enrol-form").hidden = true;
    $("mfa-qr").textContent = "";
    $("mfa-secret").textContent = "";
    $("mfa-add").hidden = false;
  }

  $("mfa-enrol-cancel").addEventListener("click", closeEnrolment);

  onSubmit($("mfa-enrol-form"), function () {
    var error = $("mfa-enrol-error");
    error.hidden = true;
    return call("POST", "auth/mfa/totp/" + encodeURIComponent(enrolling) + "/confirm", {
      code: $("mfa-enrol-code").value.trim()
    }).then(function (answer) {
      if (answer.status === 200) {
        tokens = answer.body;
        closeEnrolment();
        if (answer.body.recovery_codes) {
          showCodes(answer.body.recovery_codes);
        }
        return Promise.all([loadFactors(), loadSessions()]);
      }
      if (answer.body.error_code === "FACTOR_NOT_FOUND") {
        closeEnrolment();
        $("mfa-section-error").textContent = "That took too long. Add the app again.";
        $("mfa-section-error").hidden = false;
        return null;
      }
      error.textContent = answer.body.error_code === "INVALID_MFA_CODE"
        ? "That code is not right. Enter the newest code the app shows."
        : reasonsOf(answer).join("; ");
      error.hidden = false;
      return null;
    });
  }, function () {
    $("mfa-enrol-error").textContent = "The service could not be reached. Try again in a moment.";
    $("mfa-enrol-error").hidden = false;
  });

  $("mfa-new-codes").addEventListener("click", function () {
    var again = $("mfa-new-codes");
    again.disabled = true;
    $("mfa-section-error").hidden = true;
    call("POST", "auth/mfa/recovery-codes", {}).then(function (answer) {
      if (answer.status === 200) {
        showCodes(answer.body.recovery_codes);
        return loadFactors();
      }
      sectionError(answer);
      return null;
    }).then(function () {
      again.disabled = false;
    });
  });

  $("signout").addEventListener("click", function () {
    var refresh = tokens && tokens.refresh_token;
    request("POST", "auth/logout", { refresh_token: refresh }).then(function () {
      signedOut("You are signed out.");
    });
  });

  $("signout-everywhere").addEventListener("click", function () {
    call("POST", "auth/logout-all").then(function () {
      signedOut("You are signed out everywhere.");
    });
  });

  // --- passkeys -------------------------------------------------------------------------------
  var passkeysHere = !!(window.PublicKeyCredential &&
    PublicKeyCredential.parseCreationOptionsFromJSON && navigator.credentials);
  $("passkey-signin").hidden = !passkeysHere;

  function passkeyError(element, answer) {
    element.textContent = answer.body.error_code === "MFA_STEP_UP_REQUIRED"
      ? "For this, sign out and sign in again with your second step or a passkey."
      : answer.body.detail || "Something went wrong; try again.";
    element.hidden = false;
  }

  // The email a token was issued to (shown at the top of the page).
  function emailOf(token) {
    try {
      var part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part)).email || "";
    } catch (ignored) {
      return "";
    }
  }

  $("passkey-signin").addEventListener("click", function () {
    var error = $("signin-error");
    error.hidden = true;
    request("POST", "auth/passkeys/login/start", {}).then(function (started) {
      if (started.status !== 200) {
        throw started;
      }
      return navigator.credentials.get({
        publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(started.body.options.publicKey)
      }).then(function (credential) {
        return request("POST", "auth/passkeys/login/finish", {
          ceremony_id: started.body.ceremony_id,
          credential: credential.toJSON()
        });
      });
    }).then(function (answer) {
      if (answer.status === 200) {
        return enter(answer, emailOf(answer.body.access_token));
      }
      throw answer;
    }).catch(function (failure) {
      error.textContent = failure && failure.body
        ? (failure.body.error_code === "INVALID_PASSKEY"
          ? "That passkey was not accepted. Try again, or sign in with your password."
          : failure.body.detail || "Something went wrong; try again.")
        : "No passkey was used. Try again, or sign in with your password.";
      error.hidden = false;
    });
  });

  function loadPasskeys() {
    return call("GET", "auth/passkeys").then(function (answer) {
      if (answer.status !== 200) {
        return;
      }
      var items = $("passkeys");
      items.textContent = "";
      answer.body.passkeys.forEach(function (passkey) {
        items.appendChild(removableItem(passkey.name, passkey,
          "auth/passkeys/" + encodeURIComponent(passkey.passkey_id), "passkeys-error",
          function (removed) { passkeyError($("passkeys-error"), removed); }, loadPasskeys));
      });
      var count = answer.body.passkeys.length;
      $("passkeys-state").textContent = count > 0
        ? count + (count === 1 ? " passkey signs" : " passkeys sign") +
          " you in without a password."
        : "None yet: a passkey signs you in with your fingerprint, face or device PIN, no password.";
      $("passkey-add").disabled = !passkeysHere;
    });
  }

  $("passkey-add").addEventListener("click", function () {
    var error = $("passkeys-error");
    var add = $("passkey-add");
    error.hidden = true;
    add.disabled = true;
    call("POST", "auth/passkeys/register/start", {}).then(function (started) {
      if (started.status !== 200) {
        throw started;
      }
      return navigator.credentials.create({
        publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(started.body.options.publicKey)
      }).then(function (credential) {
        return call("POST", "auth/passkeys/register/finish", {
          ceremony_id: started.body.ceremony_id,
          credential: credential.toJSON(),
          name: $("passkey-name").value.trim() || undefined
        });
      });
    }).then(function (answer) {
      if (answer.status !== 201) {
        throw answer;
      }
      $("passkey-name").value = "";
      return loadPasskeys();
    }).catch(function (failure) {
      if (failure && failure.body) {
        passkeyError(error, failure);
      } else {
        error.textContent = "No passkey was made. Try again.";
        error.hidden = false;
      }
    }).then(function () {
      add.disabled = !passkeysHere;
    });
  });

  onSubmit($("password-form"), function () {
    var reasons = $("password-reasons");
    var done = $("password-done");
    done.hidden = true;
    var changed = $("changed-password").value;
    if (changed !== $("changed-again").value) {
      list(reasons, ["the two new passwords differ"]);
      return null;
    }
    return call("POST", "auth/password/change", {
      current_password: $("current-password").value,
      new_password: changed
    }).then(function (answer) {
      if (answer.status === 200) {
        list(reasons, []);
        ["current-password", "changed-password", "changed-again"].forEach(function (id) {
          $(id).value = "";
        });
        done.hidden = false;
        return loadSessions();
      }
      list(reasons, answer.body.error_code === "INVALID_CREDENTIALS"
        ? ["the current password is wrong"] : reasonsOf(answer));
      return null;
    });
  }, function () {
    list($("password-reasons"), ["The service could not be reached. Try again in a moment."]);
  });

  onSubmit($("delete-form"), function () {
    var error = $("delete-error");
    error.hidden = true;
    return call("DELETE", "auth/me", { password: $("delete-password").value })
      .then(function (answer) {
        if (answer.status === 200) {
          $("delete-password").value = "";
          signedOut("Your account has been deleted.");
          return;
        }
        error.textContent = answer.body.error_code === "INVALID_CREDENTIALS"
          ? "The password is wrong." : answer.body.detail || "Something went wrong; try again.";
        error.hidden = false;
      });
  }, function () {
    $("delete-error").textContent = "The service could not be reached. Try again in a moment.";
    $("delete-error").hidden = false;
  });
})();
