// The hosted pages' one script. Reset and verification: it reads the token from the link and
// POSTs it to the service's JSON API only when the person presses the button (opening the link
// spends nothing). The account page: it signs in with the JSON API and keeps the tokens in this
// page's memory only (a reload signs out): never in storage or a cookie.
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
    ["signin-form", "account", "signed-out"].forEach(function (id) {
      $(id).hidden = id !== name;
    });
  }

  function signedOut(message) {
    tokens = null;
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

  onSubmit($("signin-form"), function () {
    var error = $("signin-error");
    error.hidden = true;
    var email = $("signin-email").value;
    return request("POST", "auth/login", { email: email, password: $("signin-password").value })
      .then(function (answer) {
        if (answer.status === 200) {
          tokens = answer.body;
          $("signin-password").value = "";
          $("who").textContent = email;
          view("account");
          return loadSessions();
        }
        var code = answer.body.error_code;
        error.textContent = code === "INVALID_CREDENTIALS" ? "Wrong email or password."
          : code === "TOO_MANY_ATTEMPTS" ? "Too many attempts. Try again in " +
            Math.ceil(Number(answer.headers.get("retry-after") || 60) / 60) + " minutes."
          : code === "EMAIL_NOT_VERIFIED" ? "Confirm your email address first: open the link we sent you."
          : answer.body.detail || "Something went wrong; try again.";
        error.hidden = false;
        return null;
      });
  }, function () {
    $("signin-error").textContent = "The service could not be reached. Try again in a moment.";
    $("signin-error").hidden = false;
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
